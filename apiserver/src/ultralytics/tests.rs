//! The Ultralytics routes over a memory cluster: shapes, read-your-writes, roles, and that
//! one workspace cannot reach another's datasets or uploads.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::Utc;
use ocellus_crds::{DatasetCounts, DatasetPhase, DatasetStatus, DeploymentPhase};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;
use crate::api::keys::{KeyRecord, PlaintextKey};
use crate::api::{KeyIndex, Keys, Limits, MemorySecrets, RateLimiter, Role};

pub(super) struct Fixture {
    pub app: Router,
    pub cluster: Arc<MemoryCluster>,
    pub a_editor: PlaintextKey,
    pub a_viewer: PlaintextKey,
    pub b_editor: PlaintextKey,
}

/// The routes' state over `cluster`, with `gateway` for predictions.
pub(super) fn state(
    cluster: &Arc<MemoryCluster>,
    gateway: Option<Router>,
    platform_bucket: Option<&str>,
) -> UltralyticsApi {
    UltralyticsApi::in_memory(cluster, gateway, platform_bucket.map(String::from))
}

/// The shared API state with one editor key of `ns`.
pub(super) fn api_with(key: &PlaintextKey, ns: &str) -> ApiState {
    let keys = Keys::from_index(KeyIndex::from_records([KeyRecord::new(key, ns, Role::Editor, "a", Utc::now())]));
    let limiter = RateLimiter::new(Limits::default(), 10);
    ApiState::new(keys, Arc::new(MemorySecrets::new()), "rel".into(), limiter, &prometheus::Registry::new())
        .expect("state")
}

pub(super) fn fixture() -> Fixture {
    let (a_editor, a_viewer, b_editor) =
        (PlaintextKey::from_bytes([1; 20]), PlaintextKey::from_bytes([2; 20]), PlaintextKey::from_bytes([3; 20]));
    let keys = Keys::from_index(KeyIndex::from_records([
        KeyRecord::new(&a_editor, "team-a", Role::Editor, "a", Utc::now()),
        KeyRecord::new(&a_viewer, "team-a", Role::Viewer, "av", Utc::now()),
        KeyRecord::new(&b_editor, "team-b", Role::Editor, "b", Utc::now()),
    ]));
    let registry = prometheus::Registry::new();
    let limiter = RateLimiter::new(
        Limits::with_overrides("upload=unlimited,training=unlimited,export=unlimited").expect("limits"),
        100,
    );
    let api = ApiState::new(keys, Arc::new(MemorySecrets::new()), "rel".into(), limiter, &registry).expect("state");
    let cluster = Arc::new(MemoryCluster::default());
    let ul = state(&cluster, None, Some("ocellus"));
    let app = api.router_with(ul.router(&api));
    Fixture { app, cluster, a_editor, a_viewer, b_editor }
}

pub(super) async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    key: &PlaintextKey,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req =
        Request::builder().method(method).uri(uri).header(header::AUTHORIZATION, format!("Bearer {}", key.expose()));
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req.body(body.map(|b| Body::from(b.to_string())).unwrap_or_default()).expect("request");
    let r = app.clone().oneshot(req).await.expect("call");
    let status = r.status();
    assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json", "{method} {uri}");
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.expect("body");
    (status, serde_json::from_slice(&bytes).expect("json"))
}

#[tokio::test]
async fn a_dataset_is_created_listed_and_read_back_in_both_key_sets() {
    let f = fixture();
    let body = json!({"dataset": "shapes", "name": "Shapes", "task": "detect", "description": "d", "visibility": null});
    let (s, created) = call(&f.app, "POST", "/api/datasets", &f.a_editor, Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().expect("id").to_string();
    assert!(id.starts_with("ds_"), "{id}");
    assert_eq!(created["_id"], created["id"]);
    assert_eq!((created["owner"].as_str(), created["dataset"].as_str()), (Some("team-a"), Some("shapes")));

    let (s, list) = call(&f.app, "GET", "/api/datasets/team-a", &f.a_editor, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["total"], 1);
    let item = &list["datasets"][0];
    for (k, v) in [
        ("id", json!(id)),
        ("_id", json!(id)),
        ("owner", json!("team-a")),
        ("username", json!("team-a")),
        ("dataset", json!("shapes")),
        ("slug", json!("shapes")),
        ("name", json!("Shapes")),
        ("description", json!("d")),
        ("visibility", json!("private")),
        ("task", json!("detect")),
        ("status", json!("ready")),
        ("imageCount", json!(0)),
    ] {
        assert_eq!(item[k], v, "{k} in {item}");
    }
    // The reference's forms: no owner in the path, and the id in the path.
    let (_, own) = call(&f.app, "GET", "/api/datasets?limit=5", &f.a_editor, None).await;
    assert_eq!(own["datasets"][0]["id"], json!(id));
    let (s, by_id) = call(&f.app, "GET", &format!("/api/datasets/{id}"), &f.a_editor, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(by_id["dataset"]["slug"], "shapes");
    let (s, one) = call(&f.app, "GET", "/api/datasets/team-a/shapes", &f.a_viewer, None).await;
    assert_eq!(s, StatusCode::OK, "a viewer reads");
    assert_eq!(one["dataset"]["id"], json!(id));
    let (_, summary) = call(&f.app, "GET", "/api/account/summary", &f.a_viewer, None).await;
    assert_eq!(summary["username"], "team-a");
    assert_eq!(summary["counts"]["datasets"], 1);

    // A slug from the name, a duplicate, and bad input.
    let (s, c) = call(&f.app, "POST", "/api/datasets", &f.a_editor, Some(json!({"name": "My Parts (v2)"}))).await;
    assert_eq!((s, c["dataset"].as_str()), (StatusCode::CREATED, Some("my-parts-v2")));
    let (s, e) = call(&f.app, "POST", "/api/datasets", &f.a_editor, Some(json!({"dataset": "shapes"}))).await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert!(e["error"].as_str().expect("error").contains("already exists"), "{e}");
    let (s, e) = call(&f.app, "POST", "/api/datasets", &f.a_editor, Some(json!({"dataset": "Bad_Slug"}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert!(e["error"].as_str().expect("error").contains("slug"), "{e}");
    let (s, _) =
        call(&f.app, "POST", "/api/datasets", &f.a_editor, Some(json!({"dataset": "x", "task": "depth"}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "unknown task");
    let (s, _) = call(&f.app, "POST", "/api/datasets", &f.a_viewer, Some(json!({"dataset": "y"}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a viewer cannot create");

    let (s, _) = call(&f.app, "DELETE", "/api/datasets/team-a/my-parts-v2", &f.a_editor, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(&f.app, "GET", "/api/datasets/team-a/my-parts-v2", &f.a_editor, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "read your delete");
}

#[tokio::test]
async fn one_workspace_cannot_reach_another() {
    let f = fixture();
    let (_, created) = call(&f.app, "POST", "/api/datasets", &f.a_editor, Some(json!({"dataset": "secret"}))).await;
    let id = created["id"].as_str().expect("id").to_string();
    let b = &f.b_editor;
    let (_, list) = call(&f.app, "GET", "/api/datasets", b, None).await;
    assert_eq!(list["total"], 0);
    for (method, uri, body) in [
        ("GET", "/api/datasets/team-a".to_string(), None),
        ("GET", "/api/datasets/team-a/secret".to_string(), None),
        ("GET", format!("/api/datasets/{id}"), None),
        ("DELETE", "/api/datasets/team-a/secret".to_string(), None),
        ("DELETE", format!("/api/datasets/{id}"), None),
        ("POST", "/api/datasets/team-a/secret/ingest".to_string(), Some(json!({"sourceUrl": "https://x/a.zip"}))),
        ("POST", "/api/datasets/ingest".to_string(), Some(json!({"datasetId": id, "sourceUrl": "https://x/a.zip"}))),
        ("POST", "/api/datasets".to_string(), Some(json!({"dataset": "z", "owner": "team-a"}))),
        // team-a's upload session, presented by team-b.
        (
            "POST",
            "/api/upload/complete".to_string(),
            Some(json!({"sessionId": upload::session_id("team-a/datasets/secret/uploads/00/a.zip")})),
        ),
    ] {
        let (s, e) = call(&f.app, method, &uri, b, body).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method} {uri}: {e}");
    }
    let (s, _) = call(&f.app, "GET", "/api/datasets/team-a/secret", &f.a_editor, None).await;
    assert_eq!(s, StatusCode::OK, "still there for its owner");
    // An upload session of team-a's namespace cannot be ingested into team-b's dataset either.
    call(&f.app, "POST", "/api/datasets", b, Some(json!({"dataset": "mine"}))).await;
    let foreign = upload::session_id("team-a/datasets/secret/uploads/00/a.zip");
    let (s, _) = call(&f.app, "POST", "/api/datasets/team-b/mine/ingest", b, Some(json!({"sessionId": foreign}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Nor can team-b point an ingest at team-a's objects in the platform bucket.
    let (s, e) = call(
        &f.app,
        "POST",
        "/api/datasets/team-b/mine/ingest",
        b,
        Some(json!({"sourceUrl": "s3://ocellus/team-a/datasets/secret/uploads/00/a.zip"})),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{e}");
}

#[tokio::test]
async fn an_ingest_sets_the_source_and_the_status_follows_the_operator() {
    let f = fixture();
    let (_, created) = call(&f.app, "POST", "/api/datasets", &f.a_editor, Some(json!({"dataset": "parts"}))).await;
    let id = created["id"].as_str().expect("id");
    let key = "team-a/datasets/parts/uploads/0a0b/parts.zip";
    let (s, r) = call(
        &f.app,
        "POST",
        "/api/datasets/team-a/parts/ingest",
        &f.a_editor,
        Some(json!({"sessionId": upload::session_id(key)})),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{r}");
    assert_eq!(r, json!({"jobId": "parts-2", "status": "queued"}));
    let d = f.cluster.store().get(&reflector::ObjectRef::new("parts").within("team-a")).expect("dataset");
    assert_eq!(d.spec.source.upload.as_ref().expect("upload").objects, vec!["0a0b/parts.zip".to_string()]);
    let (_, one) = call(&f.app, "GET", "/api/datasets/team-a/parts", &f.a_editor, None).await;
    assert_eq!(one["dataset"]["status"], "processing", "the operator has not seen generation 2");
    // Lists render each item once per Dataset version: each change below must show in them.
    let listed = |f: &Fixture| {
        let (app, key) = (f.app.clone(), f.a_editor.clone());
        async move { call(&app, "GET", "/api/datasets/team-a", &key, None).await.1["datasets"][0].clone() }
    };
    assert_eq!(listed(&f).await["status"], "processing");

    let mut st = DatasetStatus { phase: DatasetPhase::Ready, ingested_hash: Some("h".into()), ..Default::default() };
    st.common.observed_generation = Some(2);
    st.counts = Some(DatasetCounts {
        images: 12,
        classes: 2,
        annotations: 30,
        per_split: [("train".to_string(), 10), ("val".to_string(), 2)].into(),
        per_class: vec![],
    });
    st.class_names = vec!["circle".into(), "square".into()];
    f.cluster.set_status("team-a", "parts", st.clone());
    let (_, one) = call(&f.app, "GET", &format!("/api/datasets/team-a/{id}"), &f.a_editor, None).await;
    let item = &one["dataset"];
    assert_eq!(item["status"], "ready", "{item}");
    assert_eq!(item["imageCount"], 12);
    assert_eq!(item["classNames"], json!(["circle", "square"]));
    assert_eq!(item["splits"], json!({"train": 10, "val": 2, "test": 0, "labeled": 12}));
    assert_eq!(listed(&f).await, *item, "the list's item is the retrieved one, after the change");

    st.phase = DatasetPhase::Failed;
    st.job.failure = Some(ocellus_crds::Failure { message: Some("no images found".into()), ..Default::default() });
    f.cluster.set_status("team-a", "parts", st);
    let (_, one) = call(&f.app, "GET", "/api/datasets/team-a/parts", &f.a_editor, None).await;
    assert_eq!(one["dataset"]["status"], "failed");
    assert_eq!(one["dataset"]["processingError"]["message"], "no images found");
    assert_eq!(listed(&f).await["status"], "failed");
    // The joined fragments are `DatasetList`, the shape the OpenAPI document gives.
    let (_, all) = call(&f.app, "GET", "/api/datasets/team-a", &f.a_editor, None).await;
    let all: super::datasets::DatasetList = serde_json::from_value(all).expect("a DatasetList");
    assert_eq!((all.total, all.datasets.len(), all.region.as_str()), (1, 1, "us"));

    // What an ingest cannot do is said, not ignored.
    for (body, status) in [
        (json!({}), StatusCode::BAD_REQUEST),
        (json!({"sessionId": upload::session_id(key), "sourceUrl": "https://x/a.zip"}), StatusCode::BAD_REQUEST),
        (json!({"sourceUrl": "ftp://x/a.zip"}), StatusCode::BAD_REQUEST),
        (json!({"sourceUrl": "https://x/a.zip", "targetSplit": "val"}), StatusCode::NOT_IMPLEMENTED),
        (json!({"sourceUrl": "https://x/a.zip", "conflictPolicy": "skip"}), StatusCode::NOT_IMPLEMENTED),
        (json!({"sourceUrl": "https://x/a.zip", "conflictPolicy": "merge"}), StatusCode::BAD_REQUEST),
        (json!({"sessionId": upload::session_id("team-a/datasets/other/uploads/0/a.zip")}), StatusCode::BAD_REQUEST),
        (json!({"sessionId": "us_!!"}), StatusCode::NOT_FOUND),
    ] {
        let (s, e) = call(&f.app, "POST", "/api/datasets/team-a/parts/ingest", &f.a_editor, Some(body.clone())).await;
        assert_eq!(s, status, "{body}: {e}");
        assert!(e["error"].is_string() && e["code"].is_string(), "{e}");
    }
    let (s, r) = call(
        &f.app,
        "POST",
        "/api/datasets/ingest",
        &f.a_editor,
        Some(json!({"datasetId": id, "sourceUrl": "s3://public-data/parts.zip", "conflictPolicy": "replace"})),
    )
    .await;
    assert_eq!((s, r["jobId"].as_str()), (StatusCode::ACCEPTED, Some("parts-3")), "{r}");
    // Uploads need object storage, which this server lacks.
    let (s, e) = call(
        &f.app,
        "POST",
        "/api/upload/signed-url",
        &f.a_editor,
        Some(json!({"assetType": "datasets", "assetId": id, "filename": "parts.zip"})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_IMPLEMENTED, "{e}");
}

#[test]
fn sessions_name_only_upload_keys_of_their_namespace() {
    let key = "ns/datasets/d/uploads/abc/x.zip";
    assert_eq!(upload::session_key(&upload::session_id(key), "ns").expect("own"), key);
    for bad in [
        "other/datasets/d/uploads/abc/x.zip",
        "ns/datasets/d/uploads/../x.zip",
        "ns/datasets/d/uploads/abc/sub/x.zip",
        "ns/datasets/d/images/abc/x.zip",
        "ns/models/m/uploads/abc/x.pt",
    ] {
        assert!(upload::session_key(&upload::session_id(bad), "ns").is_err(), "{bad}");
    }
    assert_eq!(datasets::slugify("  Hello, World!  "), "hello-world");
    assert_eq!(datasets::slugify(&"x".repeat(80)).len(), 63);
}

#[tokio::test]
async fn gateway_paths_still_reach_the_gateway_beside_these_routes() {
    let f = fixture();
    let registry = prometheus::Registry::new();
    let (gateway, _wakes) = crate::Gateway::new(crate::gateway::GatewayConfig::default(), &registry).expect("gateway");
    gateway.index().mark_synced();
    let health = ocellus_common::Health::new(registry);
    let (api, ul) = (api_with(&f.a_editor, "demo"), state(&f.cluster, None, None));
    let app = crate::app_with_apis(crate::AppState { health, gateway }, api, ul);
    for path in ["/demo/shapes/predict", "/api2/shapes/predict", "/datasets/x/predict"] {
        let req = Request::post(path)
            .header(header::AUTHORIZATION, format!("Bearer {}", f.a_editor.expose()))
            .body(Body::empty())
            .expect("req");
        let r = app.clone().oneshot(req).await.expect("call");
        let status = r.status();
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.expect("body");
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(String::from_utf8_lossy(&body).contains("not found"), "{path}: the gateway's own 404, got {body:?}");
    }
}

fn model_deployment(ns: &str, name: &str, phase: DeploymentPhase, replicas: i32) -> ocellus_crds::ModelDeployment {
    // A uid of its own per object, as the API server gives (ids are derived from it).
    let n = ns.bytes().chain(name.bytes()).fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let uid = format!("11111111-2222-4333-8444-{:012x}", n & 0xffff_ffff_ffff);
    let mut md: ocellus_crds::ModelDeployment = serde_json::from_value(json!({
        "apiVersion": "ocellus.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": ns, "uid": uid, "generation": 1,
                     "creationTimestamp": "2026-12-01T10:00:00Z"},
        "spec": {"model": {"export": {"name": "e"}}, "resources": {"cpu": "500m", "memory": "1536Mi"},
                 "scaling": {"minReplicas": 0, "maxReplicas": 3}},
    }))
    .expect("md");
    let mut st = ocellus_crds::ModelDeploymentStatus { phase, replicas, ..Default::default() };
    st.model_version = Some("8a6453233793".into());
    md.status = Some(st);
    md
}

#[tokio::test]
async fn deployments_are_listed_read_and_predicted_through_the_gateway() {
    let f = fixture();
    f.cluster.put_deployment(model_deployment("team-a", "shapes", DeploymentPhase::ScaledToZero, 0));
    f.cluster.put_deployment(model_deployment("team-a", "old", DeploymentPhase::Stopped, 1));
    f.cluster.put_deployment(model_deployment("team-b", "theirs", DeploymentPhase::Ready, 1));
    let (s, list) = call(&f.app, "GET", "/api/deployments/team-a", &f.a_viewer, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["total"], 2);
    let shapes = &list["deployments"][1];
    assert_eq!(shapes["deployment"], "shapes");
    assert_eq!(shapes["status"], "ready", "at zero, the next request wakes it");
    assert_eq!(shapes["resources"], json!({"cpu": 0.5, "memoryGi": 1.5, "minInstances": 0, "maxInstances": 3}));
    assert_eq!(shapes["serviceUrl"], "http://localhost/team-a/shapes");
    assert_eq!(list["deployments"][0]["status"], "stopping", "stopped, a replica still up");
    let (_, only) = call(&f.app, "GET", "/api/deployments/team-a?status=ready", &f.a_viewer, None).await;
    assert_eq!(only["total"], 1);
    let id = shapes["id"].as_str().expect("id");
    let (s, one) = call(&f.app, "GET", &format!("/api/deployments/team-a/{id}"), &f.a_viewer, None).await;
    assert_eq!((s, one["deployment"]["deployment"].as_str()), (StatusCode::OK, Some("shapes")));
    for uri in ["/api/deployments/team-b", "/api/deployments/team-b/theirs", "/api/deployments/team-a/theirs"] {
        let (s, _) = call(&f.app, "GET", uri, &f.a_viewer, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{uri}");
    }
    let (s, _) = call(&f.app, "POST", "/api/deployments/team-b/theirs/predict", &f.a_editor, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "another workspace's deployment");
    let (s, e) = call(&f.app, "POST", "/api/deployments/team-a/shapes/predict", &f.a_editor, None).await;
    assert_eq!(s, StatusCode::NOT_IMPLEMENTED, "no gateway in this fixture: {e}");
}

#[tokio::test]
async fn a_prediction_is_handed_to_the_gateway_under_the_deployment_path() {
    let f = fixture();
    f.cluster.put_deployment(model_deployment("team-a", "shapes", DeploymentPhase::ScaledToZero, 0));
    // A stand-in gateway that echoes the path and query it was handed, and whether a key came.
    let gateway = Router::new().route(
        "/{ns}/{name}/{*rest}",
        axum::routing::any(|req: axum::extract::Request| async move {
            let auth = req.headers().contains_key(header::AUTHORIZATION);
            axum::Json(json!({"uri": req.uri().to_string(), "auth": auth}))
        }),
    );
    let (api, ul) = (api_with(&f.a_editor, "team-a"), state(&f.cluster, Some(gateway), None));
    let app = api.router_with(ul.router(&api));
    let (s, echoed) =
        call(&app, "POST", "/api/deployments/team-a/shapes/predict?conf=0.3", &f.a_editor, Some(json!({}))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(echoed["uri"], "/team-a/shapes/predict?conf=0.3");
    assert_eq!(echoed["auth"], true, "the gateway checks the key itself (and removes it)");
}

#[tokio::test]
async fn health_is_the_predictors_through_the_gateway_and_logs_come_in_pages() {
    let f = fixture();
    f.cluster.put_deployment(model_deployment("team-a", "shapes", DeploymentPhase::Ready, 1));
    f.cluster.put_deployment(model_deployment("team-a", "sick", DeploymentPhase::Ready, 1));
    // A stand-in gateway: `shapes` is healthy, `sick` is not; both need the caller's key.
    let gateway = Router::new().route(
        "/{ns}/{name}/health",
        axum::routing::get(|axum::extract::Path((_, name)): axum::extract::Path<(String, String)>, h: axum::http::HeaderMap| async move {
            match (h.contains_key(header::AUTHORIZATION), name.as_str()) {
                (false, _) => (StatusCode::UNAUTHORIZED, "no key".to_string()),
                (true, "shapes") => (StatusCode::OK, r#"{"status":"UP"}"#.to_string()),
                _ => (StatusCode::SERVICE_UNAVAILABLE, "model not loaded".to_string()),
            }
        }),
    );
    let (api, ul) = (api_with(&f.a_editor, "team-a"), state(&f.cluster, Some(gateway), None));
    let app = api.router_with(ul.router(&api));
    let (s, h) = call(&app, "GET", "/api/deployments/team-a/shapes/health", &f.a_editor, None).await;
    assert_eq!(s, StatusCode::OK, "{h}");
    assert_eq!((h["healthy"].as_bool(), h["status"].as_u64()), (Some(true), Some(200)), "{h}");
    assert!(h["latencyMs"].is_number() && h.get("error").is_none(), "{h}");
    let (_, h) = call(&app, "GET", "/api/deployments/team-a/sick/health", &f.a_editor, None).await;
    assert_eq!(
        (h["healthy"].as_bool(), h["status"].as_u64(), h["error"].as_str()),
        (Some(false), Some(503), Some("model not loaded"))
    );
    let (s, _) = call(&app, "GET", "/api/deployments/team-b/shapes/health", &f.a_editor, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "another workspace");

    let now = Utc::now();
    let at = |secs: i64| (now - chrono::Duration::seconds(secs)).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let lines: String =
        (0..5).map(|i| format!("{} {} line {i}\n", at(100 - i), if i % 2 == 0 { "INFO" } else { "ERROR" })).collect();
    let old = format!("{} INFO two days ago\n", at(2 * 86400));
    f.cluster.set_predictor_logs(
        "team-a",
        "shapes",
        vec![crate::ultralytics::cluster::PodLog { pod: "shapes-1".into(), text: lines + &old }],
    );
    let (s, page) = call(&app, "GET", "/api/deployments/team-a/shapes/logs?limit=2", &f.a_editor, None).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let messages = |p: &Value| {
        p["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(messages(&page), ["[shapes-1] INFO line 4", "[shapes-1] ERROR line 3"]);
    let token = page["nextPageToken"].as_str().expect("a next page");
    let (_, page2) =
        call(&app, "GET", &format!("/api/deployments/team-a/shapes/logs?limit=2&pageToken={token}"), &f.a_editor, None)
            .await;
    assert_eq!(messages(&page2), ["[shapes-1] INFO line 2", "[shapes-1] ERROR line 1"]);
    let token = page2["nextPageToken"].as_str().expect("a third page");
    let (_, page3) =
        call(&app, "GET", &format!("/api/deployments/team-a/shapes/logs?limit=2&pageToken={token}"), &f.a_editor, None)
            .await;
    assert_eq!(messages(&page3), ["[shapes-1] INFO line 0"], "the two-day-old line is outside the window");
    assert!(page3.get("nextPageToken").is_none());
    let (_, errors) =
        call(&app, "GET", "/api/deployments/team-a/shapes/logs?severity=error,critical", &f.a_editor, None).await;
    assert_eq!(messages(&errors), ["[shapes-1] ERROR line 3", "[shapes-1] ERROR line 1"]);
    assert_eq!(errors["entries"][0]["severity"], "ERROR");
    for bad in ["severity=LOUD", "limit=0", "limit=201", "pageToken=nope"] {
        let (s, e) = call(&app, "GET", &format!("/api/deployments/team-a/shapes/logs?{bad}"), &f.a_editor, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {e}");
    }
    let (s, _) = call(&app, "GET", "/api/deployments/team-b/shapes/logs", &f.a_editor, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "another workspace");
}

#[tokio::test]
async fn the_references_id_forms_of_deployments_act_in_the_keys_workspace() {
    let f = fixture();
    f.cluster.put_deployment(model_deployment("team-a", "shapes", DeploymentPhase::Ready, 1));
    f.cluster.put_deployment(model_deployment("team-a", "old", DeploymentPhase::Stopped, 0));
    f.cluster.put_deployment(model_deployment("team-b", "theirs", DeploymentPhase::Ready, 1));
    let (s, list) = call(&f.app, "GET", "/api/deployments?limit=1", &f.a_viewer, None).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    assert_eq!((list["total"].as_u64(), list["deployments"].as_array().map(Vec::len)), (Some(2), Some(1)));
    let (s, _) = call(&f.app, "GET", "/api/deployments?owner=team-b", &f.a_viewer, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "another workspace");
    let (s, _) = call(&f.app, "GET", "/api/deployments?limit=101", &f.a_viewer, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = call(&f.app, "GET", "/api/deployments?modelId=0123456789ab", &f.a_viewer, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "no such model");

    let (_, all) = call(&f.app, "GET", "/api/deployments/team-a", &f.a_viewer, None).await;
    let id = all["deployments"][1]["id"].as_str().expect("id").to_string();
    let (s, one) = call(&f.app, "GET", &format!("/api/deployments/{id}"), &f.a_viewer, None).await;
    assert_eq!((s, one["deployment"]["deployment"].as_str()), (StatusCode::OK, Some("shapes")), "{one}");
    let (s, logs) = call(&f.app, "GET", &format!("/api/deployments/{id}/logs?limit=5"), &f.a_viewer, None).await;
    assert_eq!((s, &logs["entries"]), (StatusCode::OK, &json!([])), "{logs}");
    let (s, e) = call(&f.app, "GET", &format!("/api/deployments/{id}/logs?limit=many"), &f.a_viewer, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    let (s, e) = call(&f.app, "GET", &format!("/api/deployments/{id}/metrics"), &f.a_viewer, None).await;
    assert_eq!(s, StatusCode::NOT_IMPLEMENTED, "{e}");

    let (s, _) = call(&f.app, "POST", &format!("/api/deployments/{id}/stop"), &f.a_viewer, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a viewer cannot stop it");
    let (s, stopped) = call(&f.app, "POST", &format!("/api/deployments/{id}/stop"), &f.a_editor, None).await;
    assert_eq!((s, stopped["status"].as_str()), (StatusCode::OK, Some("stopping")), "{stopped}");
    let (_, started) = call(&f.app, "POST", &format!("/api/deployments/{id}/start"), &f.a_editor, None).await;
    assert_eq!(started["status"], "deploying", "{started}");
    let (s, _) = call(&f.app, "POST", &format!("/api/deployments/{id}/reboot"), &f.a_editor, None).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);

    // Team B's key cannot reach team A's deployment by its id.
    let (s, _) = call(&f.app, "GET", &format!("/api/deployments/{id}"), &f.b_editor, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = call(&f.app, "DELETE", &format!("/api/deployments/{id}"), &f.b_editor, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = call(&f.app, "DELETE", "/api/deployments/team-a", &f.a_editor, None).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "a workspace is not deleted");
    let (s, _) = call(&f.app, "DELETE", &format!("/api/deployments/{id}"), &f.a_editor, None).await;
    assert_eq!(s, StatusCode::OK);
    let (_, after) = call(&f.app, "GET", "/api/deployments", &f.a_viewer, None).await;
    assert_eq!(after["total"], 1);
    let body = json!({"modelId": "0123456789ab", "name": "x", "region": "us-central1"});
    let (s, _) = call(&f.app, "POST", "/api/deployments", &f.a_editor, Some(body)).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "no such model");
}

#[test]
fn a_dataset_export_reads_the_current_manifest_or_a_frozen_version() {
    let mut d: ocellus_crds::Dataset = serde_json::from_value(json!({
        "apiVersion": "ocellus.dev/v1alpha1", "kind": "Dataset",
        "metadata": {"name": "shapes", "namespace": "team-a"},
        "spec": {"task": "detect", "format": "yolo", "source": {}},
    }))
    .expect("dataset");
    let e = super::datasets::manifest_for(&d, None).expect_err("no manifest yet");
    assert_eq!(e.status(), StatusCode::CONFLICT, "{e}");
    let version = |name: &str, uri: &str| ocellus_crds::DatasetVersionStatus {
        name: name.into(),
        description: None,
        manifest_uri: uri.into(),
        images: 1,
        created_at: None,
    };
    d.status = Some(DatasetStatus {
        manifest_uri: Some("s3://b/current.ndjson".into()),
        versions: vec![version("first", "s3://b/first.ndjson"), version("v1", "s3://b/v1.ndjson")],
        ..Default::default()
    });
    let m = |v| super::datasets::manifest_for(&d, v);
    assert_eq!(m(None).expect("current"), "s3://b/current.ndjson");
    assert_eq!(m(Some(1)).expect("v1 by name"), "s3://b/v1.ndjson");
    assert_eq!(m(Some(2)).expect("the second"), "s3://b/v1.ndjson");
    assert_eq!(m(Some(3)).expect_err("none").status(), StatusCode::NOT_FOUND);
    assert_eq!(m(Some(0)).expect_err("none").status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn routes_the_platform_has_and_ocellus_does_not_answer_in_the_error_shape() {
    let f = fixture();
    for (method, uri, status) in [
        ("PATCH", "/api/projects/team-a/p", StatusCode::NOT_IMPLEMENTED),
        ("GET", "/api/training/gpu-availability", StatusCode::NOT_IMPLEMENTED),
        ("POST", "/api/models/team-a/p/m/clone", StatusCode::NOT_IMPLEMENTED),
        ("PATCH", "/api/models/team-a/p/m", StatusCode::NOT_IMPLEMENTED),
        ("GET", "/api/billing/usage-summary", StatusCode::NOT_IMPLEMENTED),
        ("GET", "/api/trash", StatusCode::NOT_IMPLEMENTED),
        ("GET", "/api/datasets/team-a/x/images", StatusCode::NOT_IMPLEMENTED),
        // A served path, another method: the platform's (planned), or no one's.
        ("PATCH", "/api/datasets/team-a/x", StatusCode::NOT_IMPLEMENTED),
        ("PUT", "/api/deployments/team-a/d", StatusCode::METHOD_NOT_ALLOWED),
        ("DELETE", "/api/account/summary", StatusCode::METHOD_NOT_ALLOWED),
        ("TRACE", "/api/models/team-a/p/m", StatusCode::METHOD_NOT_ALLOWED),
        ("GET", "/api/nothing-like-it", StatusCode::NOT_FOUND),
    ] {
        let (s, e) = call(&f.app, method, uri, &f.a_viewer, None).await;
        assert_eq!(s, status, "{method} {uri}: {e}");
        assert!(e["error"].is_string() && e["code"].is_string(), "{method} {uri}: {e}");
    }
    // Behind authentication, like every route.
    let r = f.app.clone().oneshot(Request::get("/api/projects/team-a").body(Body::empty()).expect("r")).await;
    assert_eq!(r.expect("call").status(), StatusCode::UNAUTHORIZED);
}

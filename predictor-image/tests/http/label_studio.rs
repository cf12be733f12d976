//! The Label Studio ML-backend protocol over real HTTP, with requests shaped as Label Studio 1.23
//! sends them (`ml/api_connector.py`): `/health`, `/setup` (project `"<id>.<timestamp>"`, schema,
//! hostname, access_token), `/predict` with full task JSON, `/webhook`, `/train`, `/versions`, and
//! basic auth. Task images come from a local HTTP server acting as Label Studio's `/data/upload`.

use super::common;

use super::common::{Predictor, fixture};
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use serde_json::{Value, json};

const CONFIG: &str = r#"<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="label" toName="image">
    <Label value="Circle" background="red"/>
    <Label value="Square" background="blue"/>
    <Label value="Tri" predicted_values="triangle"/>
  </RectangleLabels>
</View>"#;

const TOKEN: &str = "ls-secret-token";

/// A stand-in for Label Studio's file server: `/data/upload/1/{n}.jpg` needs `Token <TOKEN>`,
/// `/public/{n}.jpg` is open. Returns its base URL.
async fn image_server() -> String {
    let images: Vec<Vec<u8>> = fixture().images.iter().map(|(_, b)| b.clone()).collect();
    let (a, b) = (images.clone(), images);
    let app = axum::Router::new()
        .route(
            "/data/upload/1/{name}",
            get(move |Path(name): Path<String>, headers: HeaderMap| {
                let images = a.clone();
                async move {
                    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Token {TOKEN}")) {
                        return Err(StatusCode::UNAUTHORIZED);
                    }
                    let i: usize = name.trim_end_matches(".jpg").parse().map_err(|_| StatusCode::NOT_FOUND)?;
                    images.get(i).cloned().ok_or(StatusCode::NOT_FOUND)
                }
            }),
        )
        .route(
            "/public/{name}",
            get(move |Path(name): Path<String>| {
                let images = b.clone();
                async move {
                    let i: usize = name.trim_end_matches(".jpg").parse().map_err(|_| StatusCode::NOT_FOUND)?;
                    images.get(i).cloned().ok_or(StatusCode::NOT_FOUND)
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://127.0.0.1:{}", addr.port())
}

fn task(id: u64, image: &str) -> Value {
    json!({"id": id, "data": {"image": image}, "meta": {}, "annotations": [], "predictions": [], "project": 1,
           "created_at": "2026-11-23T10:00:00Z", "updated_at": "2026-11-23T10:00:00Z", "is_labeled": false})
}

fn predict_body(tasks: Vec<Value>) -> Value {
    json!({"tasks": tasks, "model_version": null, "project": "1.1763900000", "label_config": CONFIG,
           "params": {"login": null, "password": null, "context": null}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn label_studio_calls_are_answered_as_it_expects() {
    let f = fixture();
    let ls = image_server().await;
    let p = Predictor::start(&f.onnx, &["--conf", "0.05"]);
    let client = reqwest::Client::new();

    // Health, as the connection check calls it (1 s timeout).
    let r = client
        .get(format!("{}/health", p.url))
        .timeout(std::time::Duration::from_secs(1))
        .send()
        .await
        .expect("health");
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.expect("json")["status"], "UP");

    // Setup: a model version; the host and token are remembered for the project.
    let setup = json!({"project": "1.1763900000", "schema": CONFIG, "hostname": ls, "access_token": TOKEN, "extra_params": null});
    let r = client.post(format!("{}/setup", p.url)).json(&setup).send().await.expect("setup");
    assert_eq!(r.status(), 200);
    let version = r.json::<Value>().await.expect("json")["model_version"].as_str().expect("version").to_string();
    let bad = json!({"project": "1.1", "schema": "<View><Image name='image' value='$image'/><Choices name='c' toName='image'><Choice value='x'/></Choices></View>"});
    let r = client.post(format!("{}/setup", p.url)).json(&bad).send().await.expect("setup");
    assert_eq!(r.status(), 400);
    assert!(r.json::<Value>().await.expect("json")["error"].as_str().is_some_and(|e| e.contains("RectangleLabels")));

    // Predict: uploaded files (relative URL, fetched with the project's token), a public URL on
    // the same host, an unknown file and a host that is not Label Studio on a private address.
    let found = f.with_detections();
    let (a, b) = (found[0], found[1]);
    let tasks = vec![
        task(1, &format!("/data/upload/1/{a}.jpg")),
        task(2, &format!("{ls}/public/{b}.jpg")),
        task(3, "/data/upload/1/999.jpg"),
        task(4, &format!("{}/public/2.jpg", ls.replace("127.0.0.1", "localhost"))),
    ];
    let r = client.post(format!("{}/predict", p.url)).json(&predict_body(tasks)).send().await.expect("predict");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 4, "exactly one entry per task");
    assert!(results.iter().all(|r| r["model_version"] == version.as_str()));
    for r in &results[..2] {
        let items = r["result"].as_array().expect("result");
        assert!(!items.is_empty(), "the fixture model finds shapes: {r}\n{}", p.log());
        for it in items {
            assert_eq!(
                (it["from_name"].as_str(), it["to_name"].as_str(), it["type"].as_str()),
                (Some("label"), Some("image"), Some("rectanglelabels"))
            );
            assert_eq!((it["original_width"].as_u64(), it["original_height"].as_u64()), (Some(128), Some(128)));
            let v = &it["value"];
            for k in ["x", "y", "width", "height"] {
                assert!(v[k].as_f64().is_some_and(|x| (0.0..=100.0).contains(&x)), "{k} in percent: {v}");
            }
            assert!(["Circle", "Square", "Tri"].contains(&v["rectanglelabels"][0].as_str().unwrap_or("")), "{v}");
        }
        assert!(r["score"].as_f64().is_some_and(|s| s > 0.0));
    }
    assert_eq!(results[2]["result"], json!([]), "a missing file gives an empty result, not a failed call");
    assert_eq!(results[3]["result"], json!([]), "a non-Label-Studio private host is refused (SSRF)");

    // The same image through the Ultralytics route gives the same boxes (percent × size).
    let u: Value = client
        .post(format!("{}/predict", p.url))
        .multipart(common::form(&f.images[a].1, &[("conf", "0.05")]))
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    let mapped = u["images"][0]["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter(|d| ["circle", "square", "triangle"].contains(&d["name"].as_str().unwrap_or("")))
        .count();
    assert_eq!(results[0]["result"].as_array().map(Vec::len), Some(mapped));
    let first = &u["images"][0]["results"][0]["box"];
    let v = &results[0]["result"][0]["value"];
    assert!((v["x"].as_f64().expect("x") - first["x1"].as_f64().expect("x1") / 128.0 * 100.0).abs() < 1e-3);

    // Missing label config, bad JSON: 400 with {error}.
    let r = client.post(format!("{}/predict", p.url)).json(&json!({"tasks": []})).send().await.expect("predict");
    assert_eq!(r.status(), 400);
    let r = client
        .post(format!("{}/predict", p.url))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .expect("predict");
    assert_eq!(r.status(), 400);
    assert!(r.json::<Value>().await.expect("json")["error"].is_string());

    // Training events and versions.
    let hook = json!({"action": "START_TRAINING", "project": {"id": 1, "label_config": CONFIG}});
    let r = client.post(format!("{}/webhook", p.url)).json(&hook).send().await.expect("webhook");
    assert_eq!(r.status(), 201);
    assert!(r.json::<Value>().await.expect("json").as_object().is_some_and(|o| o.contains_key("job")));
    let r = client.post(format!("{}/train", p.url)).json(&hook).send().await.expect("train");
    assert_eq!(r.status(), 201);
    let r = client
        .post(format!("{}/webhook", p.url))
        .json(&json!({"action": "PROJECT_UPDATED", "project": {"id": 1}}))
        .send()
        .await
        .expect("webhook");
    assert_eq!(
        (r.status().as_u16(), r.json::<Value>().await.expect("json")["status"].clone()),
        (200, json!("Unknown event"))
    );
    let r: Value =
        client.get(format!("{}/versions", p.url)).send().await.expect("versions").json().await.expect("json");
    assert_eq!(r["versions"], json!([version]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn basic_auth_and_configured_label_studio_url() {
    let f = fixture();
    let ls = image_server().await;
    let env = [
        ("BASIC_AUTH_USER", "ml"),
        ("BASIC_AUTH_PASS", "s3cret"),
        ("LABEL_STUDIO_URL", ls.as_str()),
        ("LABEL_STUDIO_API_KEY", TOKEN),
    ];
    let p = Predictor::start_with(&f.onnx.display().to_string(), &["--conf", "0.05"], &env);
    let client = reqwest::Client::new();
    // Health needs no credentials (Label Studio's connection check).
    assert_eq!(client.get(format!("{}/health", p.url)).send().await.expect("health").status(), 200);
    for (user, pass) in [(None, None), (Some("ml"), Some("wrong")), (Some("other"), Some("s3cret"))] {
        let mut rb = client.get(format!("{}/versions", p.url));
        if let Some(u) = user {
            rb = rb.basic_auth(u, pass);
        }
        let r = rb.send().await.expect("versions");
        assert_eq!(r.status(), 401);
        assert!(r.headers().contains_key("www-authenticate"));
    }
    let r = client
        .post(format!("{}/predict", p.url))
        .json(&predict_body(vec![task(1, "/data/upload/1/0.jpg")]))
        .send()
        .await
        .expect("predict");
    assert_eq!(r.status(), 401);
    // With credentials, no /setup: the configured LABEL_STUDIO_URL and key resolve the upload.
    let upload = format!("/data/upload/1/{}.jpg", f.with_detections()[0]);
    let r = client
        .post(format!("{}/predict", p.url))
        .basic_auth("ml", Some("s3cret"))
        .json(&predict_body(vec![task(1, &upload)]))
        .send()
        .await
        .expect("predict");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    assert!(body["results"][0]["result"].as_array().is_some_and(|r| !r.is_empty()), "{body}");
    // The token never appears in responses or logs.
    assert!(!body.to_string().contains(TOKEN));
    assert!(!p.log().contains(TOKEN) && !p.log().contains("s3cret"));
}

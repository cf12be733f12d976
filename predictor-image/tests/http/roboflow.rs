//! Roboflow's inference-server protocol over real HTTP with the trained fixture model: the model
//! manager, v1 object detection (one image and a list), the legacy v0 route, thresholds and bad
//! input, each detection compared with the predictor's own Ultralytics `/predict` answer for the
//! same image; and Roboflow's real client, `inference-sdk`'s `InferenceHTTPClient`, in v1 and v0.

use std::path::PathBuf;

use base64::Engine;
use serde_json::{Value, json};

use super::common::{Predictor, fixture, form};

/// Served as `shapes`, so that the Roboflow model id is `shapes/<artifact SHA-256 prefix>`.
const ARGS: [&str; 4] = ["--model-name", "shapes", "--conf", "0.05"];
/// An API key a client might send: ignored, and never in the log.
const KEY: &str = "rf-test-key-5190";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The served model's id, from the registry (which also has to describe it right).
async fn model_id(p: &Predictor) -> String {
    let r: Value = reqwest::get(format!("{}/model/registry", p.url)).await.expect("get").json().await.expect("json");
    let m = &r["models"][0];
    assert_eq!(r["models"].as_array().map(Vec::len), Some(1), "{r}");
    assert_eq!(
        (&m["task_type"], &m["input_height"], &m["input_width"]),
        (&json!("object-detection"), &json!(96), &json!(96))
    );
    assert!(m["batch_size"].as_u64().is_some_and(|b| b >= 1), "{r}");
    let id = m["model_id"].as_str().expect("model_id").to_string();
    let version = id.strip_prefix("shapes/").expect("named by --model-name");
    assert!(version.len() == 12 && version.chars().all(|c| c.is_ascii_hexdigit()), "the SHA-256 prefix: {id}");
    id
}

/// The Ultralytics route's detections of `image` at `conf`.
async fn ultralytics(p: &Predictor, image: &[u8], conf: &str) -> Vec<Value> {
    let r = reqwest::Client::new()
        .post(format!("{}/predict", p.url))
        .multipart(form(image, &[("conf", conf)]))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.expect("json")["images"][0]["results"].as_array().expect("results").clone()
}

/// `got` (Roboflow predictions) are `want` (Ultralytics results), box for box: centre and size of
/// the same corners, same class and confidence, within `tol` pixels.
fn assert_same(got: &Value, want: &[Value], tol: f64, what: &str) {
    let got = got.as_array().unwrap_or_else(|| panic!("{what}: no predictions: {got}"));
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    let f = |v: &Value| v.as_f64().unwrap_or_else(|| panic!("{what}: not a number: {v}"));
    for (g, w) in got.iter().zip(want) {
        let b = &w["box"];
        let (x1, y1, x2, y2) = (f(&b["x1"]), f(&b["y1"]), f(&b["x2"]), f(&b["y2"]));
        for (k, expect) in [("x", (x1 + x2) / 2.0), ("y", (y1 + y2) / 2.0), ("width", x2 - x1), ("height", y2 - y1)] {
            assert!((f(&g[k]) - expect).abs() <= tol, "{what} {k}: {g} vs {w}");
        }
        assert_eq!((&g["class"], &g["class_id"]), (&w["name"], &w["class"]), "{what}");
        assert!((f(&g["confidence"]) - f(&w["confidence"])).abs() <= 1e-4, "{what}: {g} vs {w}");
        assert!(g["detection_id"].as_str().is_some_and(|d| d.len() == 36), "{what}: {g}");
    }
}

async fn post(url: String, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new().post(url).json(&body).send().await.expect("post");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn roboflow_requests_get_the_ultralytics_detections() {
    let f = fixture();
    let p = Predictor::start(&f.onnx, &ARGS);
    let id = model_id(&p).await;
    let client = reqwest::Client::new();

    // The model manager: ours is loaded already; another id is 404 naming ours.
    let (status, v) = post(format!("{}/model/add", p.url), json!({"model_id": id, "api_key": KEY})).await;
    assert_eq!((status, &v["models"][0]["model_id"]), (200, &json!(id)));
    let (status, v) = post(format!("{}/model/add", p.url), json!({"model_id": "coco/3"})).await;
    assert_eq!(status, 404);
    assert!(v["message"].as_str().is_some_and(|m| m.contains(&id)), "{v}");

    // v1, one image at a time, against /predict at the same threshold.
    let found = f.with_detections();
    assert!(found.len() >= 3, "the fixture model finds shapes");
    let url = format!("{}/infer/object_detection", p.url);
    let image = |i: usize| json!({"type": "base64", "value": b64(&f.images[i].1)});
    let mut singles = Vec::new();
    for &i in &found[..3] {
        let want = ultralytics(&p, &f.images[i].1, "0.05").await;
        let (status, v) = post(url.clone(), json!({"model_id": id, "image": image(i), "confidence": 0.05})).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["image"], json!({"width": 128, "height": 128}));
        assert!(v["inference_id"].as_str().is_some_and(|i| i.len() == 36) && v["time"].as_f64().is_some(), "{v}");
        assert_same(&v["predictions"], &want, 1e-3, &format!("v1 image {i}"));
        singles.push(want);
    }
    // A list of images: a list of answers, in order (batched together).
    let (status, v) =
        post(url.clone(), json!({"model_id": id, "image": found[..3].iter().map(|&i| image(i)).collect::<Vec<_>>()}))
            .await;
    assert_eq!(status, 200, "{v}");
    let answers = v.as_array().expect("a list");
    assert_eq!(answers.len(), 3);
    for (k, (a, want)) in answers.iter().zip(&singles).enumerate() {
        assert_same(&a["predictions"], want, 1e-3, &format!("batch element {k}"));
    }

    // Thresholds are honoured: between the lowest and highest confidence, fewer boxes, the same
    // as /predict's at that threshold.
    let i = found[0];
    let confs: Vec<f64> = singles[0].iter().filter_map(|d| d["confidence"].as_f64()).collect();
    let (lo, hi) = confs.iter().fold((f64::MAX, f64::MIN), |(lo, hi), c| (lo.min(*c), hi.max(*c)));
    let mid = if hi > lo { (lo + hi) / 2.0 } else { hi + 1e-3 };
    let (_, v) = post(url.clone(), json!({"model_id": id, "image": image(i), "confidence": mid})).await;
    let want = ultralytics(&p, &f.images[i].1, &mid.to_string()).await;
    assert!(want.len() < singles[0].len(), "confidence {mid} keeps fewer boxes than 0.05");
    assert_same(&v["predictions"], &want, 1e-3, "v1 at the median confidence");
    let (_, v) =
        post(url.clone(), json!({"model_id": id, "image": image(i), "confidence": 0.05, "max_detections": 1})).await;
    assert_same(&v["predictions"], &singles[0][..1], 1e-3, "max_detections 1");

    // Legacy v0: base64 body, thresholds in the query (confidence in percent).
    let (body, want) = (b64(&f.images[i].1), &singles[0]);
    let r = client
        .post(format!("{}/{id}?api_key={KEY}&confidence=5&overlap=70", p.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_same(&v["predictions"], want, 1e-3, "v0");
    assert_eq!(v["image"], json!({"width": 128, "height": 128}));

    // A detector is not a classifier; bad input gets a 4xx `{"message"}`.
    let (status, v) = post(format!("{}/infer/classification", p.url), json!({"model_id": id, "image": image(i)})).await;
    assert_eq!(status, 400);
    assert!(
        v["message"].as_str().is_some_and(|m| m.contains("object-detection") && m.contains("/infer/object_detection")),
        "{v}"
    );
    for (body, status, needle) in [
        (json!({"model_id": id, "image": {"type": "base64", "value": "@@not base64@@"}}), 400, "base64"),
        (
            json!({"model_id": id, "image": {"type": "base64", "value": b64(b"GIF89a, not one we read")}}),
            415,
            "unsupported image format",
        ),
        (json!({"model_id": id, "image": {"type": "base64", "value": b64(&f.images[i].1[..200])}}), 400, "truncated"),
        (json!({"model_id": "shapes/1", "image": image(i)}), 404, id.as_str()),
    ] {
        let (got, v) = post(url.clone(), body).await;
        assert_eq!(got, status, "{v}");
        assert!(v["message"].as_str().is_some_and(|m| m.contains(needle)), "{needle:?} not in {v}");
    }
    let r = client.post(format!("{}/shapes/1", p.url)).body(b64(&f.images[i].1)).send().await.expect("post");
    assert_eq!(r.status(), 404);
    // Requests were counted under their protocol; the API key never reached the log.
    let metrics = reqwest::get(format!("{}/metrics", p.url)).await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("protocol=\"roboflow\""), "{metrics}");
    assert!(!p.log().contains(KEY), "{}", p.log());
}

/// The script: the real client, as a user would point it at a deployment.
const SDK_SCRIPT: &str = r#"
import json, sys
from inference_sdk import InferenceHTTPClient, InferenceConfiguration

url, model_id, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
client = InferenceHTTPClient(api_url=url, api_key="unused")
# The SDK's default transport puts the key in the query and the JSON body. Deployments are
# reached through the apiserver's gateway, which checks the key and removes it; the predictor
# checks none, and ignores one it is sent.
client.configure(InferenceConfiguration(confidence_threshold=0.05, max_batch_size=len(paths)))
registry = [m.model_id for m in client.list_loaded_models().models]
v1 = [client.infer(p, model_id=model_id) for p in paths]
batch = client.infer(paths, model_id=model_id)
client.select_api_v0()
v0 = [client.infer(p, model_id=model_id) for p in paths]
print(json.dumps({"registry": registry, "v1": v1, "batch": batch, "v0": v0}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_inference_sdk_gets_the_same_detections() {
    let python = ocellus_tests::require_tool("ocellus-python");
    let check = std::process::Command::new(&python).args(["-c", "import inference_sdk"]).output().expect("run python");
    assert!(
        check.status.success(),
        "inference-sdk is not installed in {}: run `hack/setup.sh python` (hack/test.sh does)\n{}",
        python.display(),
        String::from_utf8_lossy(&check.stderr)
    );
    let f = fixture();
    let p = Predictor::start(&f.onnx, &ARGS);
    let id = model_id(&p).await;
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("roboflow-sdk");
    std::fs::create_dir_all(&dir).expect("dir");
    let found: Vec<usize> = f.with_detections().into_iter().take(3).collect();
    let mut paths = Vec::new();
    for &i in &found {
        let path = dir.join(format!("{i}.jpg"));
        std::fs::write(&path, &f.images[i].1).expect("write");
        paths.push(path.display().to_string());
    }
    let out = tokio::process::Command::new(&python)
        .args(["-c", SDK_SCRIPT, &p.url, &id])
        .args(&paths)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .output()
        .await
        .expect("run python");
    assert!(out.status.success(), "the client failed:\n{}\n{}", String::from_utf8_lossy(&out.stderr), p.log());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("the script's JSON");
    assert_eq!(v["registry"], json!([id]));
    for (k, &i) in found.iter().enumerate() {
        let want = ultralytics(&p, &f.images[i].1, "0.05").await;
        assert!(!want.is_empty());
        // JSON floats through Python and back: the same numbers.
        for mode in ["v1", "batch", "v0"] {
            let answer = &v[mode][k];
            assert_eq!(answer["image"], json!({"width": 128, "height": 128}), "{mode}: {answer}");
            assert_same(&answer["predictions"], &want, 1e-3, &format!("inference-sdk {mode} image {i}"));
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

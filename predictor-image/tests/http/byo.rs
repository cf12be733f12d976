//! Serving Ultralytics' own exports as they are (no Ocellus sidecar; the metadata they embed):
//! the raw ONNX layout with NMS, the `nms=True` end-to-end layout without, and TorchScript. Each
//! answers what Ultralytics' `predict` answers with the same file on the same images.

use serde_json::Value;

use super::common::{Predictor, form};
use ocellus_tests::ultralytics::fixture;

/// Confidence: both sides run the same graph (ONNX Runtime 1.32 on both, or libtorch), so scores
/// differ only through the decoded pixels (OpenCV's and the `image` crate's JPEG decoders may
/// differ by one level) and the resize: well under 0.01.
const CONF_TOL: f64 = 0.01;
/// Box corners, in original pixels (images of 160 to 224 px).
const BOX_TOL: f64 = 1.0;
/// Detections within this of the threshold (0.25) may fall on either side of it.
const EDGE: f64 = 0.01;

/// Posts each val image; compares with Ultralytics' predictions of `format`.
async fn assert_matches_ultralytics(p: &Predictor, format: &str) {
    let f = fixture();
    let client = reqwest::Client::new();
    let mut compared = 0;
    for img in f.split("val") {
        let bytes = std::fs::read(&img.path).expect("image");
        let resp = client
            .post(format!("{}/predict", p.url))
            .multipart(form(&bytes, &[("conf", "0.25"), ("iou", "0.7")]))
            .send()
            .await
            .expect("post");
        assert_eq!(resp.status(), 200, "{}", p.log());
        let body: Value = resp.json().await.expect("json");
        let got = body["images"][0]["results"].as_array().cloned().unwrap_or_default();
        let want = f.predictions(format, &img.file);
        let solid = |v: &Value, key: &str| v[key].as_f64().expect("conf") > 0.25 + EDGE;
        let (got_solid, want_solid): (Vec<&Value>, Vec<&Value>) = (
            got.iter().filter(|g| solid(g, "confidence")).collect(),
            want.iter().filter(|w| solid(w, "confidence")).collect(),
        );
        assert_eq!(got_solid.len(), want_solid.len(), "{format} {}: {got:?} vs {want:?}", img.file);
        for w in want_solid {
            let wb: Vec<f64> = w["box"].as_array().expect("box").iter().map(|v| v.as_f64().expect("f")).collect();
            let matched = got_solid.iter().any(|g| {
                let gb = [&g["box"]["x1"], &g["box"]["y1"], &g["box"]["x2"], &g["box"]["y2"]]
                    .map(|v| v.as_f64().expect("f"));
                g["class"] == w["class"]
                    && g["name"] == w["name"]
                    && (g["confidence"].as_f64().expect("c") - w["confidence"].as_f64().expect("c")).abs() <= CONF_TOL
                    && gb.iter().zip(&wb).all(|(a, b)| (a - b).abs() <= BOX_TOL)
            });
            assert!(matched, "{format} {}: Ultralytics' {w} is not among {got:?}", img.file);
            compared += 1;
        }
    }
    assert!(compared > 50, "too few detections compared ({compared})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serves_an_ultralytics_onnx_export_as_it_is() {
    let f = fixture();
    let model = f.path("best.onnx");
    assert!(!f.path("best.onnx.json").exists(), "the fixture must have no sidecar");
    let p = Predictor::start(&model, &[]);
    assert_matches_ultralytics(&p, "onnx").await;
    // What it learnt from the metadata (named by its architecture, as the description gives it),
    // as the OIP v2 model metadata shows it.
    let meta: Value =
        reqwest::get(format!("{}/v2/models/yolov8n", p.url)).await.expect("get").json().await.expect("json");
    assert_eq!(meta["outputs"][0]["shape"], serde_json::json!([-1, 7, 525]), "{meta}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serves_the_end_to_end_layout_without_nms() {
    let f = fixture();
    let p = Predictor::start(&f.path("best-nms.onnx"), &[]);
    let meta: Value =
        reqwest::get(format!("{}/v2/models/yolov8n", p.url)).await.expect("get").json().await.expect("json");
    assert_eq!(meta["outputs"][0]["shape"], serde_json::json!([-1, 300, 6]), "{meta}");
    assert_matches_ultralytics(&p, "onnx-nms").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serves_an_ultralytics_torchscript_export_as_it_is() {
    let p = Predictor::start(&fixture().path("best.torchscript"), &[]);
    assert_matches_ultralytics(&p, "torchscript").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_an_export_whose_metadata_does_not_fit() {
    // The raw export's graph with the metadata of the end-to-end one: a start-up error naming both.
    let f = fixture();
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("byo-mismatch");
    std::fs::create_dir_all(&dir).expect("dir");
    let bytes = std::fs::read(f.path("best.onnx")).expect("onnx");
    // `'nms': None` and `'nms': True` have the same length, so the protobuf stays valid.
    let needle = b"'nms': None";
    let at = bytes.windows(needle.len()).position(|w| w == needle);
    let model = dir.join("model.onnx");
    match at {
        Some(i) => {
            let mut b = bytes.clone();
            b[i..i + needle.len()].copy_from_slice(b"'nms': True");
            std::fs::write(&model, b).expect("write");
        }
        None => panic!("the fixture's metadata has no 'nms': None"),
    }
    let mut p = Predictor::spawn(&model.display().to_string(), &[], &[]);
    let code = p.wait(std::time::Duration::from_secs(30));
    let log = p.log();
    assert!(code.is_some_and(|c| c != 0), "started anyway:\n{log}");
    assert!(log.contains("does not fit") && log.contains("[batch, 300, 6]"), "{log}");
}

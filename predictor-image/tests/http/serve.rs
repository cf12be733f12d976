//! Serving a model the trainer trained and exported: predictions
//! equal the trainer's own validation predictions (ONNX Runtime and libtorch backends), bad
//! input gets clear 4xx errors, overload gets 429, OIP v2, metrics, S3 loading, graceful drain.

use std::time::Duration;

use super::common::{CONF, Predictor, fixture, form};
use serde_json::{Value, json};

/// Compares the predictor's `/predict` answers with the trainer's `val` predictions.
async fn assert_matches_validation(p: &Predictor, path: &str) {
    let f = fixture();
    let client = reqwest::Client::new();
    let mut compared = 0;
    for (file, bytes) in &f.images {
        let want = f.val_predictions.iter().find(|v| v["file"] == file.as_str()).expect("val prediction for image");
        let resp = client
            .post(format!("{}{path}", p.url))
            .multipart(form(bytes, &[("conf", CONF), ("iou", "0.7")]))
            .send()
            .await
            .expect("post");
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.expect("json");
        let img = &body["images"][0];
        assert_eq!(img["shape"], json!([want["height"], want["width"]]));
        let got = img["results"].as_array().expect("results");
        let want = want["detections"].as_array().expect("detections");
        assert_eq!(got.len(), want.len(), "{file}: {got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g["class"], w["class"]);
            assert_eq!(g["name"], w["name"]);
            let close =
                |a: &Value, b: &Value, tol: f64| (a.as_f64().expect("num") - b.as_f64().expect("num")).abs() <= tol;
            assert!(close(&g["confidence"], &w["confidence"], 1e-3), "{g} vs {w}");
            for k in ["x1", "y1", "x2", "y2"] {
                assert!(close(&g["box"][k], &w["box"][k], 0.1), "{file} {k}: {g} vs {w}");
            }
            compared += 1;
        }
    }
    assert!(compared > 10, "too few detections compared ({compared}): the fixture model should detect shapes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn onnx_predictions_match_the_trainers_validation() {
    let p = Predictor::start(&fixture().onnx, &["--max-batch", "4"]);
    assert_matches_validation(&p, "/predict").await;
    assert_matches_validation(&p, "/api/models/shapes/predict").await;
    // Requests one at a time ran on the copy that has every core (the elastic CPU default).
    let metrics = reqwest::get(format!("{}/metrics", p.url)).await.expect("metrics").text().await.expect("text");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ocellus_predictor_model_runs_total{lane=\"latency\"}") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn torchscript_predictions_match_the_trainers_validation() {
    let p = Predictor::start(&fixture().torchscript, &["--max-batch", "1"]);
    assert_matches_validation(&p, "/api/deployments/d1/predict").await;
    let meta: Value =
        reqwest::get(format!("{}/v2/models/yolov8n", p.url)).await.expect("get").json().await.expect("json");
    assert_eq!(meta["platform"], "pytorch_libtorch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_clear_client_errors() {
    let f = fixture();
    let p = Predictor::start(&f.onnx, &["--max-image-pixels", "40000"]);
    let client = reqwest::Client::new();
    let image = &f.images[0].1;
    let url = format!("{}/predict", p.url);
    let check = |status: u16, needle: &'static str| {
        move |(s, body): (u16, Value)| {
            assert_eq!(s, status, "{body}");
            assert!(body["error"].as_str().is_some_and(|e| e.contains(needle)), "{needle:?} not in {body}");
        }
    };
    async fn send(rb: reqwest::RequestBuilder) -> (u16, Value) {
        let r = rb.send().await.expect("send");
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
    // Malformed, truncated and non-image bytes.
    check(400, "truncated")(send(client.post(&url).multipart(form(&image[..image.len() / 3], &[]))).await);
    let mut garbled = image.clone();
    garbled[3..60].fill(0x55);
    check(400, "could not be decoded")(send(client.post(&url).multipart(form(&garbled, &[]))).await);
    check(415, "unsupported image format")(send(client.post(&url).multipart(form(b"this is not an image", &[]))).await);
    // Wrong content types.
    check(415, "multipart/form-data")(send(client.post(&url).header("content-type", "text/plain").body("hi")).await);
    let text_part = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(image.clone()).mime_str("text/plain").expect("mime"));
    check(415, "content type")(send(client.post(&url).multipart(text_part)).await);
    // A huge image (over the pixel limit), refused before decoding.
    let big = fixtures_png(400, 300);
    check(413, "limit")(send(client.post(&url).multipart(form(&big, &[]))).await);
    // Bad thresholds and sizes.
    check(400, "conf must be")(send(client.post(&url).multipart(form(image, &[("conf", "1.5")]))).await);
    check(400, "conf must be a number")(send(client.post(&url).multipart(form(image, &[("conf", "high")]))).await);
    check(400, "iou must be")(send(client.post(&url).multipart(form(image, &[("iou", "-0.1")]))).await);
    check(400, "imgsz must be")(send(client.post(&url).multipart(form(image, &[("imgsz", "12.5")]))).await);
    check(400, "no image")(
        send(client.post(&url).multipart(reqwest::multipart::Form::new().text("conf", "0.5"))).await,
    );
    // OIP: unknown model, wrong shape, wrong datatype, bad base64.
    let infer = format!("{}/v2/models/yolov8n/infer", p.url);
    check(404, "not served")(
        send(client.post(format!("{}/v2/models/other/infer", p.url)).json(&json!({"inputs": []}))).await,
    );
    check(400, "must have shape")(
        send(
            client.post(&infer).json(
                &json!({"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3, 8, 8], "data": [0.0]}]}),
            ),
        )
        .await,
    );
    check(400, "unsupported datatype")(
        send(
            client
                .post(&infer)
                .json(&json!({"inputs": [{"name": "images", "datatype": "INT8", "shape": [1], "data": [1]}]})),
        )
        .await,
    );
    check(400, "base64")(
        send(
            client
                .post(&infer)
                .json(&json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]})),
        )
        .await,
    );
    check(400, "invalid inference request")(
        send(client.post(&infer).body("{not json").header("content-type", "application/json")).await,
    );
    // Still serving after all that.
    let ok = client.post(&url).multipart(form(image, &[])).send().await.expect("post");
    assert_eq!(ok.status(), 200);
}

fn fixtures_png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb([200, 10, 10]));
    ocellus_tests::fixtures::encode(&img, image::ImageFormat::Png)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_is_answered_with_429_and_retry_after() {
    let f = fixture();
    let p = Predictor::start(
        &f.onnx,
        &["--queue-capacity", "2", "--max-batch", "1", "--max-delay-ms", "0", "--threads", "1"],
    );
    let client = reqwest::Client::new();
    let image = f.images[0].1.clone();
    let reqs = (0..48).map(|_| {
        let (client, url, image) = (client.clone(), format!("{}/predict", p.url), image.clone());
        async move {
            let r = client.post(url).multipart(form(&image, &[])).send().await.expect("send");
            let retry =
                r.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
            let status = r.status().as_u16();
            let body: Value = r.json().await.expect("json");
            (status, retry, body)
        }
    });
    let results = futures::future::join_all(reqs).await;
    let rejected: Vec<_> = results.iter().filter(|r| r.0 == 429).collect();
    let served = results.iter().filter(|r| r.0 == 200).count();
    assert!(!rejected.is_empty(), "48 concurrent requests into a queue of 2 should overflow");
    assert!(served >= 2, "some requests are served");
    assert_eq!(
        served + rejected.len(),
        results.len(),
        "only 200 or 429: {:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    for (_, retry, body) in rejected {
        assert!(retry.is_some_and(|s| s >= 1), "429 carries Retry-After");
        assert_eq!(body["code"], "RATE_LIMITED");
    }
    // Nothing crashed: the next request is served, metrics count the rejections.
    assert_eq!(
        client.post(format!("{}/predict", p.url)).multipart(form(&image, &[])).send().await.expect("send").status(),
        200
    );
    let metrics = reqwest::get(format!("{}/metrics", p.url)).await.expect("metrics").text().await.expect("text");
    assert!(
        metrics.lines().any(|l| l.starts_with("ocellus_predictor_rejected_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_inference_protocol_v2() {
    let f = fixture();
    // One model copy: batching is what this copy does under concurrency (the CPU's elastic
    // default runs one image per core instead).
    let p = Predictor::start(&f.onnx, &["--instances", "1", "--max-batch", "8", "--max-delay-ms", "20"]);
    let client = reqwest::Client::new();
    let get = |path: &str| client.get(format!("{}{path}", p.url)).send();
    assert_eq!(get("/v2/health/live").await.expect("live").status(), 200);
    assert_eq!(get("/v2/health/ready").await.expect("ready").status(), 200);
    assert_eq!(get("/v2/models/yolov8n/ready").await.expect("ready").status(), 200);
    let meta: Value = get("/v2/models/yolov8n").await.expect("meta").json().await.expect("json");
    assert_eq!(meta["inputs"][0], json!({"name": "images", "datatype": "FP32", "shape": [-1, 3, 96, 96]}));
    assert_eq!(meta["outputs"][0]["shape"], json!([-1, 4 + 3, 189]));
    let version = meta["versions"][0].as_str().expect("version").to_string();
    assert_eq!(get(&format!("/v2/models/yolov8n/versions/{version}")).await.expect("v").status(), 200);
    assert_eq!(get("/v2/models/yolov8n/versions/nope").await.expect("v").status(), 404);

    // Raw tensor in, raw output out: two images of zeros.
    let zeros = vec![0.0f32; 2 * 3 * 96 * 96];
    let body =
        json!({"id": "r1", "inputs": [{"name": "images", "datatype": "FP32", "shape": [2, 3, 96, 96], "data": zeros}]});
    let r: Value = client
        .post(format!("{}/v2/models/yolov8n/infer", p.url))
        .json(&body)
        .send()
        .await
        .expect("infer")
        .json()
        .await
        .expect("json");
    assert_eq!(r["id"], "r1");
    assert_eq!(r["outputs"][0]["shape"], json!([2, 7, 189]));
    assert_eq!(r["outputs"][0]["data"].as_array().map(Vec::len), Some(2 * 7 * 189));

    // Encoded images as base64 BYTES: the same detections as the Ultralytics route.
    use base64::Engine;
    let imgs: Vec<&Vec<u8>> = f.images.iter().take(3).map(|(_, b)| b).collect();
    let b64: Vec<String> = imgs.iter().map(|b| base64::engine::general_purpose::STANDARD.encode(b)).collect();
    let body = json!({"parameters": {"conf": 0.05}, "inputs": [{"name": "image", "datatype": "BYTES", "shape": [3], "data": b64}]});
    let r: Value = client
        .post(format!("{}/v2/models/yolov8n/infer", p.url))
        .json(&body)
        .send()
        .await
        .expect("infer")
        .json()
        .await
        .expect("json");
    let outs: std::collections::HashMap<String, Value> = r["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .map(|o| (o["name"].as_str().unwrap_or("").to_string(), o.clone()))
        .collect();
    let index = outs["batch_index"]["data"].as_array().expect("index").clone();
    for (i, img) in imgs.iter().enumerate() {
        let u: Value = client
            .post(format!("{}/predict", p.url))
            .multipart(form(img, &[("conf", "0.05")]))
            .send()
            .await
            .expect("post")
            .json()
            .await
            .expect("json");
        let n = index.iter().filter(|v| v.as_u64() == Some(i as u64)).count();
        assert_eq!(n, u["images"][0]["results"].as_array().map_or(0, Vec::len), "image {i}");
    }
    assert_eq!(outs["boxes"]["shape"][0], outs["scores"]["shape"][0]);

    // Triton's binary extension: raw JPEG bytes after a JSON header.
    let header = serde_json::to_vec(&json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 4 + imgs[0].len()}}]})).expect("json");
    let mut raw = header.clone();
    raw.extend((imgs[0].len() as u32).to_le_bytes());
    raw.extend(imgs[0].iter());
    let r = client
        .post(format!("{}/v2/models/yolov8n/infer", p.url))
        .header("Inference-Header-Content-Length", header.len().to_string())
        .body(raw)
        .send()
        .await
        .expect("infer");
    assert_eq!(r.status(), 200);
    let r: Value = r.json().await.expect("json");
    assert_eq!(r["outputs"].as_array().map(Vec::len), Some(4));

    // Concurrent OIP requests were batched together (the histogram saw batches above one).
    let many = (0..16).map(|_| client.post(format!("{}/v2/models/yolov8n/infer", p.url)).json(&json!({"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3, 96, 96], "data": vec![0.5f32; 3 * 96 * 96]}]})).send());
    for r in futures::future::join_all(many).await {
        assert_eq!(r.expect("infer").status(), 200);
    }
    let metrics = reqwest::get(format!("{}/metrics", p.url)).await.expect("metrics").text().await.expect("text");
    let value = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(
        value("ocellus_predictor_batch_size_sum") > value("ocellus_predictor_batch_size_count"),
        "no batch above one image:\n{metrics}"
    );
    for name in [
        "ocellus_predictor_inflight_requests",
        "ocellus_predictor_queue_depth",
        "ocellus_predictor_request_duration_seconds_bucket",
        "ocellus_predictor_inference_duration_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "{name} missing");
    }
    assert!(metrics.contains("protocol=\"oip\"") && metrics.contains("protocol=\"ultralytics\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn loads_from_s3_and_checks_the_sha256() {
    let f = fixture();
    let s3env = f.s3.env();
    let env: Vec<(&str, &str)> = s3env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let p = Predictor::start_with("s3://platform/team/exports/p/model.onnx", &["--model-name", "shapes"], &env);
    let r = reqwest::Client::new()
        .post(format!("{}/api/models/shapes/predict", p.url))
        .multipart(form(&f.images[0].1, &[]))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["metadata"]["model"], "shapes");
    drop(p);

    // Missing artifact: exit 2 with a clear log line.
    let mut p = Predictor::spawn("s3://platform/team/exports/nope/model.onnx", &["--download-retries", "0"], &env);
    assert_eq!(p.wait(Duration::from_secs(30)), Some(2), "{}", p.log());
    assert!(p.log().contains("does not exist"), "{}", p.log());

    // A local copy whose bytes no longer match its model info.
    let dir = f.dir.join("tampered");
    std::fs::create_dir_all(&dir).expect("dir");
    let mut bytes = std::fs::read(&f.onnx).expect("onnx");
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    std::fs::write(dir.join("model.onnx"), bytes).expect("write");
    std::fs::copy(f.onnx.with_extension("onnx.json"), dir.join("model.onnx.json")).expect("copy");
    let mut p = Predictor::spawn(&dir.join("model.onnx").display().to_string(), &[], &[]);
    assert_eq!(p.wait(Duration::from_secs(30)), Some(2), "{}", p.log());
    assert!(p.log().contains("does not match"), "{}", p.log());

    // A corrupt model file: a clear load error, exit 2, no panic.
    std::fs::write(dir.join("model.onnx"), b"not a model").expect("write");
    let mut info: Value =
        serde_json::from_slice(&std::fs::read(dir.join("model.onnx.json")).expect("info")).expect("json");
    info.as_object_mut().expect("obj").remove("sha256");
    std::fs::write(dir.join("model.onnx.json"), serde_json::to_vec(&info).expect("json")).expect("write");
    let mut p = Predictor::spawn(&dir.join("model.onnx").display().to_string(), &[], &[]);
    assert_eq!(p.wait(Duration::from_secs(30)), Some(2), "{}", p.log());
    assert!(p.log().contains("cannot load the model") && !p.log().contains("panicked"), "{}", p.log());

    // TensorRT where there is none: exit 2, saying so.
    let mut p = Predictor::spawn(&f.onnx.display().to_string(), &["--backend", "tensorrt", "--device", "cuda"], &[]);
    assert_eq!(p.wait(Duration::from_secs(30)), Some(2), "{}", p.log());
    assert!(p.log().contains("TensorRT"), "{}", p.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_in_flight_requests() {
    let f = fixture();
    let mut p = Predictor::start(&f.onnx, &["--max-batch", "1", "--threads", "1"]);
    let client = reqwest::Client::new();
    let reqs: Vec<_> = (0..12)
        .map(|_| {
            let (client, url, image) = (client.clone(), format!("{}/predict", p.url), f.images[0].1.clone());
            tokio::spawn(async move {
                client.post(url).multipart(form(&image, &[])).send().await.map(|r| r.status().as_u16())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(30)).await;
    p.terminate();
    let mut served = 0;
    for r in reqs {
        match r.await.expect("join") {
            Ok(200) => served += 1,
            Ok(other) => panic!("in-flight request got {other}"),
            // Requests that had not connected before the listener closed.
            Err(e) => assert!(e.is_connect(), "{e}"),
        }
    }
    assert!(served > 0);
    assert_eq!(p.wait(Duration::from_secs(30)), Some(0), "{}", p.log());
    assert!(p.log().contains("drained"), "{}", p.log());
}

/// The INT8 (QDQ) export of the same weights serves on CPU: its confident detections are the
/// float model's (same class, same place), and the OIP v2 metadata says it is INT8, with its
/// calibration, its accuracy gate and this CPU's INT8 instructions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn int8_export_serves_the_float_models_detections() {
    let f = fixture();
    let p = Predictor::start(&f.int8, &[]);
    let client = reqwest::Client::new();
    let iou = |a: &Value, b: &Value| {
        let g = |v: &Value, k: &str| v["box"][k].as_f64().expect("coordinate");
        let (ix, iy) = (
            (g(a, "x2").min(g(b, "x2")) - g(a, "x1").max(g(b, "x1"))).max(0.0),
            (g(a, "y2").min(g(b, "y2")) - g(a, "y1").max(g(b, "y1"))).max(0.0),
        );
        let area = |v: &Value| (g(v, "x2") - g(v, "x1")) * (g(v, "y2") - g(v, "y1"));
        ix * iy / (area(a) + area(b) - ix * iy)
    };
    let (mut confident, mut found) = (0, 0);
    for (file, bytes) in &f.images {
        let want = f.val_predictions.iter().find(|v| v["file"] == file.as_str()).expect("val prediction");
        let resp = client.post(format!("{}/predict", p.url)).multipart(form(bytes, &[("conf", CONF)])).send().await;
        let body: Value = resp.expect("post").json().await.expect("json");
        let got = body["images"][0]["results"].as_array().expect("results").clone();
        for w in want["detections"].as_array().expect("detections") {
            if w["confidence"].as_f64().expect("confidence") < 0.5 {
                continue;
            }
            confident += 1;
            if got.iter().any(|g| g["class"] == w["class"] && iou(g, w) >= 0.8) {
                found += 1;
            }
        }
    }
    assert!(confident >= 10, "the fixture model should be confident about some shapes ({confident})");
    assert!(found * 10 >= confident * 9, "INT8 found {found} of the float model's {confident} confident detections");

    let meta: Value =
        reqwest::get(format!("{}/v2/models/yolov8n", p.url)).await.expect("get").json().await.expect("json");
    let params = &meta["parameters"];
    assert_eq!((meta["platform"].as_str(), params["precision"].as_str()), (Some("onnxruntime_onnx"), Some("int8")));
    assert_eq!(params["quantization"]["method"], "percentile", "{params}");
    assert!(params["quantization"]["int8Map"].as_f64().is_some() && params["cpu_int8"].is_string(), "{params}");
    let float: Value = {
        let p = Predictor::start(&f.onnx, &[]);
        reqwest::get(format!("{}/v2/models/yolov8n", p.url)).await.expect("get").json().await.expect("json")
    };
    assert_eq!(float["parameters"]["precision"], "fp32");
    let ready = p.log().lines().find(|l| l.contains("model ready")).map(str::to_string).unwrap_or_default();
    assert!(ready.contains("\"int8\"") && ready.contains("cpu_int8"), "start-up reports precision and CPU: {ready}");
}

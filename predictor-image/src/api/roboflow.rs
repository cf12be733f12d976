//! Roboflow's inference-server protocol, as `inference-sdk`'s `InferenceHTTPClient` (1.8) calls it:
//! - model manager (v1): `GET /model/registry`, `POST /model/add`, `POST /model/remove`,
//!   `POST /model/clear`, each answering the one served model as
//!   `{"models": [{model_id, task_type, batch_size, input_height, input_width}]}`;
//! - inference (v1): `POST /infer/object_detection` and `POST /infer/classification`, JSON with
//!   `model_id` and `image` as `{"type": "base64"|"url", "value"}` or a list of them (one response
//!   object, or a list in order), `confidence`, `iou_threshold`, `max_detections`, `class_filter`;
//! - legacy (v0): `POST /{project}/{version}` (and `GET` with `?image=<url>`), the image as a
//!   base64 body, a multipart `file` or `?image=<url>`, thresholds in the query (`confidence`,
//!   `overlap`: fractions, or percents when 1 or more, as Roboflow's server reads them).
//!
//! The model id is `"{name}/{version}"` of [`super::Model`]; any other is 404 naming it. Errors
//! are `{"message"}` with the status of [`ApiError`]. Requests omitting thresholds get the
//! server's (`--conf`, `--iou`, `--max-det`), not Roboflow's. No authentication here: the gateway
//! in front checks the key (`Authorization: Bearer`, or the `api_key` query parameter, which it
//! strips); `api_key` in bodies is ignored and never logged. Refused with 400 rather than ignored:
//! visualisation (`visualize_predictions`, `format=image`) and image types other than `base64` and
//! `url` (`numpy` and `pil` are pickles). Accepted and ignored: `class_agnostic_nms`,
//! `max_candidates`, the preprocessing switches, active learning and usage fields. The model is the
//! ModelDeployment's: `/model/remove` and `/model/clear` answer the registry unchanged.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{Method, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use ocellus_vision::decode::Thresholds;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::label_studio::{UrlOrigin, fetch_url};
use super::{ApiError, AppState, Route, Speed, predict_image};
use crate::pipeline::{ImageError, Prediction};

/// The Roboflow routes. The legacy `/{project}/{version}` takes any two-segment path no other
/// route has (static segments win: `/model/registry`, `/infer/...`), answering 404 naming the
/// served model for what is not its id.
pub(super) fn routes() -> Vec<Route> {
    vec![
        Route::get("/model/registry", registry),
        Route::post("/model/add", add),
        Route::post("/model/remove", remove),
        Route::post("/model/clear", clear),
        Route::post("/infer/object_detection", infer_detection),
        Route::post("/infer/classification", infer_classification),
        Route::get("/{project}/{version}", legacy),
        Route::post("/{project}/{version}", legacy),
    ]
}

/// Whether `path` is one of this protocol's: `/model/...`, `/infer/...`, or two segments (legacy).
pub(super) fn owns(path: &str) -> bool {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    path.starts_with("/model/")
        || path.starts_with("/infer/")
        || segments.len() == 2 && segments.iter().all(|s| !s.is_empty())
}

/// Whether a request of this protocol (see [`owns`]) runs the model.
pub(super) fn scores(method: &Method, path: &str) -> bool {
    !path.starts_with("/model/") && (method == Method::POST || method == Method::GET && !path.starts_with("/infer/"))
}

/// An [`ApiError`] answered in the inference server's shape, `{"message": ...}`.
#[derive(Debug)]
pub struct RoboflowError(ApiError);

impl From<ApiError> for RoboflowError {
    fn from(e: ApiError) -> Self {
        RoboflowError(e)
    }
}

impl From<ImageError> for RoboflowError {
    fn from(e: ImageError) -> Self {
        RoboflowError(e.into())
    }
}

impl IntoResponse for RoboflowError {
    fn into_response(self) -> Response {
        self.0.respond(|message, _| json!({"message": message}))
    }
}

type Result<T> = std::result::Result<T, RoboflowError>;

fn bad(message: impl Into<String>) -> RoboflowError {
    RoboflowError(ApiError::BadRequest(message.into()))
}

/// `"{name}/{version}"`: the served model's Roboflow id.
pub fn model_id(s: &AppState) -> String {
    format!("{}/{}", s.model.name, s.model.version)
}

/// Roboflow's task type of the served model.
fn task_type(s: &AppState) -> &'static str {
    if s.model.info.is_detect() { "object-detection" } else { "classification" }
}

/// 404 unless `id` is the served model's id.
fn check_model(s: &AppState, id: &str) -> Result<()> {
    let ours = model_id(s);
    if id == ours {
        Ok(())
    } else {
        Err(RoboflowError(ApiError::NotFound(format!("model {id:?} is not served here; this server serves {ours:?}"))))
    }
}

/// The registry: the served model, as `ModelDescription`.
fn registry_body(s: &AppState) -> Json<Value> {
    let side = s.model.info.imgsz;
    Json(json!({"models": [{
        "model_id": model_id(s),
        "task_type": task_type(s),
        "batch_size": s.model.batcher.config().max_batch,
        "input_height": side,
        "input_width": side,
    }]}))
}

async fn registry(State(s): State<AppState>) -> Json<Value> {
    registry_body(&s)
}

/// `POST /model/add` and `/model/remove` body (`api_key` and the rest ignored).
#[derive(Debug, Deserialize)]
struct ModelRequest {
    #[serde(default)]
    model_id: Option<String>,
}

fn model_request(body: &[u8]) -> Result<String> {
    let req: ModelRequest =
        serde_json::from_slice(body).map_err(|e| bad(format!("invalid model request (JSON with `model_id`): {e}")))?;
    req.model_id.ok_or_else(|| bad("`model_id` is required"))
}

/// The served model is always loaded: adding it answers the registry; any other id is 404.
async fn add(State(s): State<AppState>, body: Bytes) -> Result<Json<Value>> {
    check_model(&s, &model_request(&body)?)?;
    Ok(registry_body(&s))
}

/// The model belongs to its ModelDeployment and stays loaded: the registry, unchanged.
async fn remove(State(s): State<AppState>, body: Bytes) -> Result<Json<Value>> {
    check_model(&s, &model_request(&body)?)?;
    Ok(registry_body(&s))
}

/// As [`remove`], for every model.
async fn clear(State(s): State<AppState>) -> Json<Value> {
    registry_body(&s)
}

/// The v1 inference request (`ObjectDetectionInferenceRequest`, `ClassificationInferenceRequest`);
/// other fields (`api_key` included) are ignored.
#[derive(Debug, Deserialize)]
struct InferRequest {
    #[serde(default)]
    model_id: Option<String>,
    #[serde(default)]
    image: Option<Value>,
    /// A number, or `"best"`/`"default"` (the server's default).
    #[serde(default)]
    confidence: Option<Value>,
    #[serde(default)]
    iou_threshold: Option<f64>,
    #[serde(default)]
    max_detections: Option<f64>,
    #[serde(default)]
    class_filter: Option<Vec<String>>,
    #[serde(default)]
    visualize_predictions: Option<bool>,
}

/// An `InferenceRequestImage`.
#[derive(Debug, Deserialize)]
struct ImageRef {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    value: Option<Value>,
}

/// Where one image comes from.
#[derive(Debug)]
enum Source {
    /// Encoded bytes.
    Bytes(Bytes),
    /// A URL to fetch (as Label Studio task URLs are, without their credentials).
    Url(String),
}

/// What a request asks beyond the image.
#[derive(Debug, Clone)]
struct Options {
    th: Thresholds,
    class_filter: Option<Vec<String>>,
}

/// Base64 as clients send it: standard alphabet, padding optional.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes a base64 image (whitespace and a `data:...;base64,` prefix allowed).
fn decode_base64(text: &[u8], max_bytes: usize) -> Result<Bytes> {
    let text = match text.iter().position(|b| *b == b',') {
        Some(i) if text.starts_with(b"data:") => &text[i + 1..],
        _ => text,
    };
    let clean: Vec<u8> = text.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    if clean.is_empty() {
        return Err(ImageError::Empty.into());
    }
    // Refused before decoding: base64 is 4 characters per 3 bytes.
    if clean.len() / 4 * 3 > max_bytes + 3 {
        return Err(ImageError::TooLarge(clean.len() / 4 * 3, max_bytes).into());
    }
    BASE64.decode(&clean).map(Bytes::from).map_err(|e| bad(format!("the image is not valid base64: {e}")))
}

fn image_source(r: ImageRef, max_bytes: usize) -> Result<Source> {
    let text = |v: Option<Value>| match v {
        Some(Value::String(t)) => Ok(t),
        _ => Err(bad(format!("an image of type {:?} needs a string `value`", r.kind))),
    };
    match r.kind.as_str() {
        "base64" => Ok(Source::Bytes(decode_base64(text(r.value)?.as_bytes(), max_bytes)?)),
        "url" => Ok(Source::Url(text(r.value)?)),
        other => Err(bad(format!(
            "image type {other:?} is not supported here: send \"base64\" or \"url\" (numpy and pil are pickles, which this server does not load)"
        ))),
    }
}

/// A threshold in `[0, 1]`; `None` keeps the default.
fn fraction(name: &str, v: Option<f64>, default: f32) -> Result<f32> {
    match v {
        None => Ok(default),
        Some(v) if v.is_finite() && (0.0..=1.0).contains(&v) => Ok(v as f32),
        Some(v) => Err(bad(format!("{name} must be a number between 0 and 1, got {v}"))),
    }
}

fn max_detections(v: Option<f64>, server_max: usize) -> Result<usize> {
    match v {
        None => Ok(server_max),
        Some(n) if n.is_finite() && n >= 1.0 && n.fract() == 0.0 => Ok((n as usize).min(server_max)),
        Some(n) => Err(bad(format!("max_detections must be a positive integer, got {n}"))),
    }
}

/// One image through the pipeline (the shared batcher), answered in Roboflow's shape.
async fn run(s: &AppState, source: Source, opts: &Options) -> std::result::Result<Answer, ApiError> {
    let bytes = match source {
        Source::Bytes(b) => b,
        Source::Url(u) => fetch_url(s, &u, UrlOrigin::Client).await?,
    };
    let detect = s.model.info.is_detect();
    // A classifier's top class is always reported (`top`), whatever the threshold.
    let th = if detect { opts.th } else { Thresholds { conf: 0.0, ..opts.th } };
    let (preds, (height, width), speed) = predict_image(s, bytes, th).await?;
    let keep = |p: &Prediction| opts.class_filter.as_ref().is_none_or(|f| f.contains(&p.name));
    let head = Head { inference_id: new_id(), time: seconds(speed), image: ImageSize { width, height } };
    if detect {
        let predictions = preds.iter().filter(|p| keep(p)).filter_map(Detection::from_prediction).collect();
        return Ok(Answer::Detection(DetectionResponse { head, predictions }));
    }
    let (top, confidence) = preds.first().map_or((String::new(), 0.0), |p| (p.name.clone(), p.confidence));
    let predictions = preds
        .iter()
        .filter(|p| p.confidence >= opts.th.conf && keep(p))
        .map(|p| ClassPrediction { class: p.name.clone(), class_id: p.class, confidence: p.confidence })
        .collect();
    Ok(Answer::Classification(ClassificationResponse { head, predictions, top, confidence }))
}

fn seconds(speed: Speed) -> f64 {
    (speed.preprocess + speed.inference + speed.postprocess) / 1e3
}

/// Images of a request, concurrently (so that they batch together), in order.
async fn run_all(s: &AppState, sources: Vec<Source>, opts: &Options) -> Result<Vec<Answer>> {
    let results = futures::future::join_all(sources.into_iter().map(|src| run(s, src, opts))).await;
    results.into_iter().map(|r| r.map_err(RoboflowError)).collect()
}

/// Fields of every response.
#[derive(Debug, Serialize)]
struct Head {
    inference_id: String,
    /// Seconds spent on the image (decode, queue and model, post-processing).
    time: f64,
    image: ImageSize,
}

#[derive(Debug, Serialize)]
struct ImageSize {
    width: u32,
    height: u32,
}

/// One box: centre, size (original pixels), class name and id.
#[derive(Debug, Serialize)]
struct Detection {
    x: f32,
    y: f32,
    width: f32,
    height: f32,
    confidence: f32,
    class: String,
    class_id: usize,
    detection_id: String,
}

impl Detection {
    fn from_prediction(p: &Prediction) -> Option<Detection> {
        let b = p.bbox?;
        Some(Detection {
            x: (b.x1 + b.x2) / 2.0,
            y: (b.y1 + b.y2) / 2.0,
            width: b.x2 - b.x1,
            height: b.y2 - b.y1,
            confidence: p.confidence,
            class: p.name.clone(),
            class_id: p.class,
            detection_id: new_id(),
        })
    }
}

/// `ObjectDetectionInferenceResponse`.
#[derive(Debug, Serialize)]
struct DetectionResponse {
    #[serde(flatten)]
    head: Head,
    predictions: Vec<Detection>,
}

#[derive(Debug, Serialize)]
struct ClassPrediction {
    class: String,
    class_id: usize,
    confidence: f32,
}

/// `ClassificationInferenceResponse`: the classes above the threshold (at most five), and the top
/// class whatever its confidence.
#[derive(Debug, Serialize)]
struct ClassificationResponse {
    #[serde(flatten)]
    head: Head,
    predictions: Vec<ClassPrediction>,
    top: String,
    confidence: f32,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Answer {
    Detection(DetectionResponse),
    Classification(ClassificationResponse),
}

/// One image, one object; a list, a list.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum OneOrMany {
    One(Answer),
    Many(Vec<Answer>),
}

/// A UUID (version 4 layout) for `inference_id` and `detection_id`: unique per process and call.
fn new_id() -> String {
    static SEED: OnceLock<[u8; 16]> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = SEED.get_or_init(|| {
        // Randomly keyed by the standard library (from the OS), mixed with time and process.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        h.write_u32(std::process::id());
        let a = h.finish();
        h.write_u64(a);
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&a.to_le_bytes());
        out[8..].copy_from_slice(&h.finish().to_le_bytes());
        out
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let d = Sha256::new().chain_update(seed).chain_update(n.to_le_bytes()).finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

async fn infer_detection(State(s): State<AppState>, body: Bytes) -> Result<Json<OneOrMany>> {
    infer_v1(s, body, true).await
}

async fn infer_classification(State(s): State<AppState>, body: Bytes) -> Result<Json<OneOrMany>> {
    infer_v1(s, body, false).await
}

/// `POST /infer/{task}`: model id, then task, then the images.
async fn infer_v1(s: AppState, body: Bytes, detect: bool) -> Result<Json<OneOrMany>> {
    let req: InferRequest =
        serde_json::from_slice(&body).map_err(|e| bad(format!("invalid inference request: {e}")))?;
    check_model(&s, req.model_id.as_deref().ok_or_else(|| bad("`model_id` is required"))?)?;
    if detect != s.model.info.is_detect() {
        let (ours, route) = if s.model.info.is_detect() {
            ("object-detection", "/infer/object_detection")
        } else {
            ("classification", "/infer/classification")
        };
        return Err(bad(format!("model {:?} is a {ours} model: call {route}", model_id(&s))));
    }
    if req.visualize_predictions == Some(true) {
        return Err(bad("visualize_predictions is not supported by this server: it returns predictions only"));
    }
    let d = s.settings.defaults;
    let confidence = match req.confidence {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if t == "best" || t == "default" => None,
        Some(Value::Number(n)) => n.as_f64(),
        Some(other) => return Err(bad(format!("confidence must be a number between 0 and 1, got {other}"))),
    };
    let opts = Options {
        th: Thresholds {
            conf: fraction("confidence", confidence, d.conf)?,
            iou: fraction("iou_threshold", req.iou_threshold, d.iou)?,
            max_det: max_detections(req.max_detections, d.max_det)?,
        },
        class_filter: req.class_filter,
    };
    let max = s.settings.limits.max_bytes;
    let parse = |v: Value| {
        serde_json::from_value::<ImageRef>(v)
            .map_err(|e| bad(format!("each image must be {{\"type\": \"base64\"|\"url\", \"value\": ...}}: {e}")))
            .and_then(|r| image_source(r, max))
    };
    match req.image {
        Some(Value::Array(items)) if !items.is_empty() => {
            let sources = items.into_iter().map(parse).collect::<Result<Vec<_>>>()?;
            Ok(Json(OneOrMany::Many(run_all(&s, sources, &opts).await?)))
        }
        Some(v @ Value::Object(_)) => {
            let answer = run(&s, parse(v)?, &opts).await?;
            Ok(Json(OneOrMany::One(answer)))
        }
        _ => {
            Err(bad("`image` is required: {\"type\": \"base64\"|\"url\", \"value\": ...} or a non-empty list of them"))
        }
    }
}

/// A legacy query number: `name` as a fraction, or a percent when 1 or more.
fn legacy_fraction(q: &HashMap<String, String>, name: &str, default: f32) -> Result<f32> {
    let Some(text) = q.get(name) else { return Ok(default) };
    let v: f64 = text.trim().parse().map_err(|_| bad(format!("{name} must be a number, got {text:?}")))?;
    let v = if v >= 1.0 { v / 100.0 } else { v };
    fraction(&format!("{name} (a fraction, or a percent up to 100)"), Some(v), default)
}

/// `/{project}/{version}` (v0): one image from `?image=<url>`, a multipart `file`, or the body
/// (base64 text whatever the content type, as the SDK sends it; raw image bytes are accepted too).
async fn legacy(
    State(s): State<AppState>,
    Path((project, version)): Path<(String, String)>,
    query: std::result::Result<Query<HashMap<String, String>>, QueryRejection>,
    req: Request,
) -> Result<Json<Answer>> {
    check_model(&s, &format!("{project}/{version}"))?;
    // The rejection is not echoed: the query may hold an API key the gateway did not strip.
    let Query(q) = query.map_err(|_| bad("the query string is not valid URL encoding"))?;
    if let Some(f) = q.get("format").filter(|f| f.as_str() != "json") {
        return Err(bad(format!("format {f:?} is not supported by this server: it returns JSON predictions only")));
    }
    let d = s.settings.defaults;
    let max_det = match q.get("max_detections") {
        Some(t) => {
            Some(t.trim().parse::<f64>().map_err(|_| bad(format!("max_detections must be a number, got {t:?}")))?)
        }
        None => None,
    };
    let opts = Options {
        th: Thresholds {
            conf: legacy_fraction(&q, "confidence", d.conf)?,
            iou: legacy_fraction(&q, "overlap", d.iou)?,
            max_det: max_detections(max_det, d.max_det)?,
        },
        class_filter: None,
    };
    let max = s.settings.limits.max_bytes;
    let source = if let Some(url) = q.get("image") {
        Source::Url(url.clone())
    } else {
        let ct =
            req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
        if ct.starts_with("multipart/form-data") {
            Source::Bytes(multipart_file(&s, req).await?)
        } else {
            let body =
                Bytes::from_request(req, &s).await.map_err(|e| bad(format!("reading the body: {}", e.body_text())))?;
            if body.is_empty() {
                return Err(bad(
                    "no image: send it base64-encoded in the body, as a multipart `file`, or as ?image=<url>",
                ));
            }
            match q.get("image_type").map(String::as_str).unwrap_or("base64") {
                "base64" if image::guess_format(&body).is_ok() && BASE64.decode(&body).is_err() => Source::Bytes(body),
                "base64" => Source::Bytes(decode_base64(&body, max)?),
                "url" => Source::Url(String::from_utf8_lossy(&body).trim().to_string()),
                other => {
                    return Err(bad(format!("image_type {other:?} is not supported here: send \"base64\" or \"url\"")));
                }
            }
        }
    };
    Ok(Json(run(&s, source, &opts).await?))
}

/// The `file` part of a multipart legacy request.
async fn multipart_file(s: &AppState, req: Request) -> Result<Bytes> {
    let mut form =
        Multipart::from_request(req, s).await.map_err(|e| bad(format!("invalid multipart body: {}", e.body_text())))?;
    while let Some(field) =
        form.next_field().await.map_err(|e| bad(format!("invalid multipart body: {}", e.body_text())))?
    {
        if field.name() == Some("file") {
            return field.bytes().await.map_err(|e| bad(format!("reading `file`: {}", e.body_text())));
        }
    }
    Err(bad("expected the image in a multipart part named `file`"))
}

#[cfg(test)]
mod tests {
    //! The protocol over HTTP against stand-in backends (a detector with the end-to-end layout and
    //! a classifier, answering fixed outputs), beside the Ultralytics route of the same server.

    use std::sync::Arc;
    use std::time::Duration;

    use ocellus_common::Health;
    use ocellus_vision::ModelInfo;

    use super::*;
    use crate::api::{LabelStudioConfig, Model, Settings, app};
    use crate::backend::{Backend, BackendError, Device, Kind, ModelSpec};
    use crate::batcher::{BatchConfig, Batcher, Lanes, Loader};
    use crate::metrics::Metrics;
    use crate::pipeline::ImageLimits;

    /// Answers every image with the same output.
    struct Fixed(Vec<f32>);

    impl Backend for Fixed {
        fn name(&self) -> &'static str {
            "fixed"
        }
        fn run(&mut self, _input: &[f32], n: usize) -> std::result::Result<Vec<f32>, BackendError> {
            Ok(self.0.repeat(n))
        }
    }

    fn info(task: &str, names: &[&str], end2end: Option<u32>) -> ModelInfo {
        ModelInfo {
            architecture: "t".into(),
            task: task.into(),
            names: names.iter().map(|n| n.to_string()).collect(),
            imgsz: 32,
            format: "onnx".into(),
            sha256: None,
            batch: 1,
            dynamic: true,
            half: false,
            end2end,
            quantization: None,
        }
    }

    /// Rows `x1, y1, x2, y2, score, class` in input pixels (32 px; a 64x48 image is scaled by 0.5
    /// and padded by 4 at the top).
    const ROWS: [f32; 24] = [
        2.0, 6.0, 10.0, 14.0, 0.9, 0.0, //
        16.0, 8.0, 30.0, 20.0, 0.5, 1.0, //
        8.0, 10.0, 20.0, 26.0, 0.3, 0.0, //
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
    ];

    fn detector() -> (ModelInfo, Vec<f32>) {
        (info("detect", &["a", "b"], Some(4)), ROWS.to_vec())
    }

    fn classifier() -> (ModelInfo, Vec<f32>) {
        (info("classify", &["cat", "dog", "bird"], None), vec![0.1, 0.7, 0.2])
    }

    /// Serves `model` as `shapes` version `abc123` on a loopback port; returns its base URL.
    async fn serve((info, out): (ModelInfo, Vec<f32>)) -> String {
        let spec = ModelSpec {
            path: "unused".into(),
            info: info.clone(),
            kind: Kind::Onnx,
            device: Device::Cpu,
            threads: 0,
            spin: false,
        };
        let loader: Loader = Arc::new(move |_: &ModelSpec| Ok(Box::new(Fixed(out.clone())) as Box<dyn Backend>));
        let metrics = Metrics::new().expect("metrics");
        let cfg = BatchConfig {
            max_batch: 4,
            max_delay: Duration::from_millis(2),
            queue_capacity: 16,
            lanes: Lanes::Fixed { instances: 1, threads: 0 },
        };
        let (batcher, ready) = Batcher::start_with(spec, cfg, metrics.clone(), loader);
        let backend = ready.await.expect("ready").expect("loaded");
        let model = Model {
            info,
            name: "shapes".into(),
            version: "abc123".into(),
            batcher,
            backend: Default::default(),
            cpu_int8: crate::cpu::Int8Support::detect(),
        };
        let _ = model.backend.set(backend);
        let settings = Settings {
            limits: ImageLimits { max_bytes: 100_000, max_pixels: 1_000_000 },
            defaults: Thresholds { conf: 0.25, iou: 0.7, max_det: 300 },
            label_studio: LabelStudioConfig { allowed_hosts: vec!["127.0.0.1".into()], ..Default::default() },
        };
        let health = Health::new(metrics.registry.clone());
        health.set_ready(true);
        let state = AppState::new(model, settings, metrics, health);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app(state)).await });
        format!("http://{addr}")
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(w, h, image::Rgb([90, 120, 200]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).expect("png");
        out.into_inner()
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    async fn post(url: &str, body: Value) -> (u16, Value) {
        let r = reqwest::Client::new().post(url).json(&body).send().await.expect("post");
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn send(rb: reqwest::RequestBuilder) -> (u16, Value) {
        let r = rb.send().await.expect("send");
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    fn message(v: &Value) -> &str {
        v["message"].as_str().unwrap_or_default()
    }

    fn f(v: &Value) -> f64 {
        v.as_f64().expect("number")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn model_manager_describes_the_one_model() {
        let base = serve(detector()).await;
        let want = json!({"models": [{"model_id": "shapes/abc123", "task_type": "object-detection", "batch_size": 4,
                                      "input_height": 32, "input_width": 32}]});
        let r: Value = reqwest::get(format!("{base}/model/registry")).await.expect("get").json().await.expect("json");
        assert_eq!(r, want);
        assert_eq!(
            post(&format!("{base}/model/add"), json!({"model_id": "shapes/abc123", "api_key": "k"})).await,
            (200, want.clone())
        );
        let (status, v) = post(&format!("{base}/model/add"), json!({"model_id": "coco/3"})).await;
        assert_eq!(status, 404);
        assert!(message(&v).contains("\"coco/3\"") && message(&v).contains("\"shapes/abc123\""), "{v}");
        assert_eq!(
            post(&format!("{base}/model/remove"), json!({"model_id": "shapes/abc123"})).await,
            (200, want.clone())
        );
        assert_eq!(send(reqwest::Client::new().post(format!("{base}/model/clear"))).await, (200, want));
        let (status, v) = post(&format!("{base}/model/add"), json!({})).await;
        assert_eq!((status, message(&v)), (400, "`model_id` is required"));

        let base = serve(classifier()).await;
        let r: Value = reqwest::get(format!("{base}/model/registry")).await.expect("get").json().await.expect("json");
        assert_eq!(r["models"][0]["task_type"], "classification");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn detections_are_the_ultralytics_boxes_as_centre_and_size() {
        let base = serve(detector()).await;
        let image = png(64, 48);
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(image.clone()).file_name("i.png").mime_str("image/png").expect("mime"),
        );
        let (status, u) = send(reqwest::Client::new().post(format!("{base}/predict")).multipart(form)).await;
        assert_eq!(status, 200, "{u}");
        let want = u["images"][0]["results"].as_array().expect("results").clone();
        assert_eq!(want.len(), 3);

        let url = format!("{base}/infer/object_detection");
        let one = json!({"type": "base64", "value": b64(&image)});
        let (status, v) = post(&url, json!({"model_id": "shapes/abc123", "image": one, "api_key": "secret"})).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["image"], json!({"width": 64, "height": 48}));
        assert!(
            v["time"].as_f64().is_some_and(|t| t >= 0.0) && v["inference_id"].as_str().is_some_and(|i| i.len() == 36)
        );
        let got = v["predictions"].as_array().expect("predictions");
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            let b = &w["box"];
            let (x1, y1, x2, y2) = (f(&b["x1"]), f(&b["y1"]), f(&b["x2"]), f(&b["y2"]));
            for (k, expect) in [("x", (x1 + x2) / 2.0), ("y", (y1 + y2) / 2.0), ("width", x2 - x1), ("height", y2 - y1)]
            {
                assert!((f(&g[k]) - expect).abs() < 1e-4, "{k}: {g} vs {w}");
            }
            assert_eq!((&g["class"], &g["class_id"]), (&w["name"], &w["class"]));
            assert!((f(&g["confidence"]) - f(&w["confidence"])).abs() < 1e-6);
            assert_eq!(g["detection_id"].as_str().map(str::len), Some(36));
        }
        // The first row, by hand: (2, 6, 10, 14) in input pixels is (4, 4, 20, 20) in the image.
        assert_eq!((f(&got[0]["x"]), f(&got[0]["y"]), f(&got[0]["width"])), (12.0, 12.0, 16.0));
        assert_ne!(got[0]["detection_id"], got[1]["detection_id"]);

        // A list answers a list, in order; thresholds and filters apply.
        let (status, v) = post(&url, json!({"model_id": "shapes/abc123", "image": [one.clone(), one.clone()]})).await;
        assert_eq!(status, 200);
        assert_eq!(
            v.as_array().map(|a| a.iter().map(|r| r["predictions"].as_array().map_or(0, Vec::len)).collect()),
            Some(vec![3, 3])
        );
        let count = |v: &Value| v["predictions"].as_array().map_or(usize::MAX, Vec::len);
        for (extra, n) in [
            (json!({"confidence": 0.6}), 1),
            (json!({"confidence": "best"}), 3),
            (json!({"confidence": 0.4, "iou_threshold": 0.5}), 2),
            (json!({"max_detections": 2}), 2),
            (json!({"class_filter": ["b"]}), 1),
            (json!({"visualize_predictions": false, "disable_active_learning": false}), 3),
        ] {
            let mut body = json!({"model_id": "shapes/abc123", "image": one});
            body.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
            let (status, v) = post(&url, body).await;
            assert_eq!((status, count(&v)), (200, n), "{extra}: {v}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn classification_answers_top_and_classes() {
        let base = serve(classifier()).await;
        let one = json!({"type": "base64", "value": b64(&png(20, 30))});
        let url = format!("{base}/infer/classification");
        let (status, v) = post(&url, json!({"model_id": "shapes/abc123", "image": one})).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!((&v["top"], &v["image"]), (&json!("dog"), &json!({"width": 20, "height": 30})));
        assert!((f(&v["confidence"]) - 0.7).abs() < 1e-6);
        assert_eq!(v["predictions"].as_array().map(Vec::len), Some(1), "the default threshold is the server's: {v}");
        assert_eq!((&v["predictions"][0]["class"], &v["predictions"][0]["class_id"]), (&json!("dog"), &json!(1)));
        let (_, v) = post(&url, json!({"model_id": "shapes/abc123", "image": one, "confidence": 0.05})).await;
        let classes: Vec<&str> =
            v["predictions"].as_array().expect("list").iter().filter_map(|p| p["class"].as_str()).collect();
        assert_eq!(classes, ["dog", "bird", "cat"]);
        // Above every class: no predictions, the top class still.
        let (_, v) = post(&url, json!({"model_id": "shapes/abc123", "image": one, "confidence": 0.9})).await;
        assert_eq!((v["predictions"].as_array().map(Vec::len), &v["top"]), (Some(0), &json!("dog")));
        // The legacy route answers a classifier in the classification shape.
        let (status, v) =
            send(reqwest::Client::new().post(format!("{base}/shapes/abc123")).body(b64(&png(20, 30)))).await;
        assert_eq!((status, &v["top"]), (200, &json!("dog")), "{v}");
        // The wrong task names the model's.
        let (status, v) =
            post(&format!("{base}/infer/object_detection"), json!({"model_id": "shapes/abc123", "image": one})).await;
        assert_eq!(status, 400);
        assert!(message(&v).contains("classification model") && message(&v).contains("/infer/classification"), "{v}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_legacy_route_reads_the_body_query_and_percentages() {
        let base = serve(detector()).await;
        let image = png(64, 48);
        let client = reqwest::Client::new();
        let url = format!("{base}/shapes/abc123");
        let count = |v: &Value| v["predictions"].as_array().map_or(usize::MAX, Vec::len);
        // As the SDK sends it: base64 text with a JSON content type, thresholds in the query.
        for (query, n) in [
            ("", 3),
            ("?confidence=0.6", 1),
            ("?confidence=60&overlap=30&api_key=k", 1),
            ("?confidence=1", 3),
            ("?max_detections=1", 1),
        ] {
            let (status, v) =
                send(client.post(format!("{url}{query}")).header("content-type", "application/json").body(b64(&image)))
                    .await;
            assert_eq!((status, count(&v)), (200, n), "{query}: {v}");
            assert_eq!(v["image"], json!({"width": 64, "height": 48}));
        }
        // Roboflow's curl form (line-wrapped base64, form content type), a data URI, raw bytes, multipart.
        let wrapped: String =
            b64(&image).as_bytes().chunks(76).map(|c| format!("{}\n", String::from_utf8_lossy(c))).collect();
        for rb in [
            client.post(&url).header("content-type", "application/x-www-form-urlencoded").body(wrapped),
            client.post(&url).body(format!("data:image/png;base64,{}", b64(&image))),
            client.post(&url).header("content-type", "image/png").body(image.clone()),
            client.post(&url).multipart(
                reqwest::multipart::Form::new().part("file", reqwest::multipart::Part::bytes(image.clone())),
            ),
        ] {
            let (status, v) = send(rb).await;
            assert_eq!((status, count(&v)), (200, 3), "{v}");
        }
        for (rb, status, needle) in [
            (client.post(&url), 400, "no image"),
            (client.get(&url), 400, "no image"),
            (client.post(format!("{url}?format=image")).body(b64(&image)), 400, "format \"image\""),
            (client.post(format!("{url}?confidence=abc")).body(b64(&image)), 400, "confidence must be a number"),
            (client.post(format!("{url}?confidence=150")).body(b64(&image)), 400, "between 0 and 1"),
            (client.post(format!("{url}?image_type=numpy")).body("x"), 400, "numpy"),
            (client.post(format!("{base}/shapes/1")).body(b64(&image)), 404, "\"shapes/abc123\""),
            (client.get(format!("{url}?image=http://localhost:1/x.png")), 400, "private address"),
        ] {
            let (got, v) = send(rb).await;
            assert_eq!(got, status, "{needle}: {v}");
            assert!(message(&v).contains(needle), "{needle:?} not in {v}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_input_gets_a_message_and_a_client_error() {
        let base = serve(detector()).await;
        let url = format!("{base}/infer/object_detection");
        let with = |image: Value| json!({"model_id": "shapes/abc123", "image": image});
        let big = vec![b'A'; 200_000];
        for (body, status, needle) in [
            (with(json!({"type": "base64", "value": "not base64!"})), 400, "not valid base64"),
            (with(json!({"type": "base64", "value": b64(b"hello, not an image")})), 415, "unsupported image format"),
            (with(json!({"type": "base64", "value": b64(&png(64, 48)[..40])})), 400, "could not be decoded"),
            (with(json!({"type": "base64", "value": String::from_utf8_lossy(&big)})), 413, "limit is 100000"),
            (with(json!({"type": "base64", "value": ""})), 400, "empty"),
            (with(json!({"type": "numpy", "value": "x"})), 400, "pickles"),
            (with(json!({"type": "url", "value": "/relative.png"})), 400, "not absolute"),
            (with(json!({"type": "url", "value": "file:///etc/passwd"})), 400, "scheme"),
            (with(json!("just a string")), 400, "`image` is required"),
            (with(json!([])), 400, "`image` is required"),
            (with(json!([{"value": "x"}])), 400, "each image must be"),
            (json!({"image": {"type": "base64", "value": "x"}}), 400, "`model_id` is required"),
            (
                json!({"model_id": "coco/3", "image": {"type": "base64", "value": "x"}}),
                404,
                "this server serves \"shapes/abc123\"",
            ),
            (
                json!({"model_id": "shapes/abc123", "image": {"type": "base64", "value": "x"}, "confidence": 2}),
                400,
                "confidence must be",
            ),
            (
                json!({"model_id": "shapes/abc123", "image": {"type": "base64", "value": "x"}, "confidence": "high"}),
                400,
                "confidence must be",
            ),
            (
                json!({"model_id": "shapes/abc123", "image": {"type": "base64", "value": "x"}, "max_detections": 0}),
                400,
                "max_detections",
            ),
            (
                json!({"model_id": "shapes/abc123", "image": {"type": "base64", "value": "x"}, "visualize_predictions": true}),
                400,
                "visualize_predictions",
            ),
        ] {
            let (got, v) = post(&url, body.clone()).await;
            assert_eq!(got, status, "{body}: {v}");
            assert!(message(&v).contains(needle), "{needle:?} not in {v}");
            assert_eq!(v.as_object().map(|o| o.len()), Some(1), "only a message: {v}");
        }
        let (status, v) =
            send(reqwest::Client::new().post(&url).header("content-type", "application/json").body("{")).await;
        assert_eq!(status, 400);
        assert!(message(&v).starts_with("invalid inference request"), "{v}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn urls_are_fetched_under_the_ssrf_rules() {
        let base = serve(detector()).await;
        let image = png(64, 48);
        let files = axum::Router::new().route("/i.png", axum::routing::get(move || async move { image.clone() }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move { axum::serve(listener, files).await });
        let url = format!("{base}/infer/object_detection");
        let image = |u: String| json!({"model_id": "shapes/abc123", "image": {"type": "url", "value": u}});
        // 127.0.0.1 is allowed (`--allow-fetch-host`); localhost resolves to a private address and is not.
        let (status, v) = post(&url, image(format!("http://127.0.0.1:{port}/i.png"))).await;
        assert_eq!((status, v["predictions"].as_array().map(Vec::len)), (200, Some(3)), "{v}");
        let (status, v) = post(&url, image(format!("http://localhost:{port}/i.png"))).await;
        assert_eq!(status, 400);
        assert!(message(&v).contains("private address"), "{v}");
        let (status, v) = post(&url, image(format!("http://127.0.0.1:{port}/missing.png"))).await;
        assert_eq!(status, 502, "{v}");
        let (status, v) =
            send(reqwest::Client::new().get(format!("{base}/shapes/abc123?image=http://127.0.0.1:{port}/i.png"))).await;
        assert_eq!((status, v["predictions"].as_array().map(Vec::len)), (200, Some(3)), "{v}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_two_segment_route_leaves_the_others_alone() {
        let base = serve(detector()).await;
        let client = reqwest::Client::new();
        for path in [
            "/v2",
            "/v2/health/live",
            "/v2/health/ready",
            "/v2/models/shapes",
            "/health",
            "/healthz",
            "/readyz",
            "/metrics",
            "/model/registry",
        ] {
            let r = client.get(format!("{base}{path}")).send().await.expect("get");
            assert_eq!(r.status(), 200, "GET {path}");
            assert!(!r.text().await.unwrap_or_default().contains("is not served here"), "GET {path}");
        }
        for path in ["/versions", "/setup", "/webhook", "/predict"] {
            let r = client.post(format!("{base}{path}")).body("{}").send().await.expect("post");
            assert!(!r.text().await.unwrap_or_default().contains("is not served here"), "POST {path}");
        }
        // A two-segment path that is no other route is a legacy model id.
        for path in ["/v2/models", "/model/other", "/infer/other"] {
            let (status, v) = send(client.post(format!("{base}{path}"))).await;
            assert_eq!((status, message(&v).contains("is not served here")), (404, true), "POST {path}: {v}");
        }
        let metrics = client.get(format!("{base}/metrics")).send().await.expect("metrics").text().await.expect("text");
        assert!(metrics.contains("protocol=\"roboflow\""), "{metrics}");
    }

    #[test]
    fn ids_are_uuids_and_differ() {
        let (a, b) = (new_id(), new_id());
        assert_ne!(a, b);
        let parts: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12]);
        assert_eq!(&a[14..15], "4");
        assert!(owns("/model/registry") && owns("/infer/classification") && owns("/shapes/abc123"));
        assert!(!owns("/predict") && !owns("/api/models/x/predict") && !owns("/a/"));
    }
}

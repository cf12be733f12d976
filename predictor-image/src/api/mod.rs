//! The HTTP APIs: Ultralytics predict ([`ultralytics`]), Open Inference Protocol v2 ([`oip`]), the
//! Label Studio ML backend ([`label_studio`]) and Roboflow's inference server ([`roboflow`]), over
//! one model. `POST /predict` serves both Ultralytics (multipart) and Label Studio (JSON), told
//! apart by the content type.

pub mod label_studio;
pub mod oip;
pub mod roboflow;
pub mod ultralytics;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::handler::Handler;
use axum::http::Method;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::{Json, Router};
use ocellus_common::Health;
use ocellus_vision::ModelInfo;
use ocellus_vision::decode::Thresholds;
use serde_json::json;

use crate::batcher::{Batcher, InferError};
use crate::metrics::Metrics;
use crate::pipeline::{self, ImageError, ImageLimits, Prediction};

/// The served model.
#[derive(Debug)]
pub struct Model {
    /// What it is.
    pub info: ModelInfo,
    /// Name in URLs and responses.
    pub name: String,
    /// Version (the artifact's SHA-256 prefix).
    pub version: String,
    /// Its threads.
    pub batcher: Batcher,
    /// Runtime name, set once loaded.
    pub backend: std::sync::OnceLock<&'static str>,
    /// This CPU's INT8 instructions (reported with the model's precision).
    pub cpu_int8: crate::cpu::Int8Support,
}

impl Model {
    /// Whether the model threads have loaded and warmed up the model.
    pub fn is_loaded(&self) -> bool {
        self.backend.get().is_some()
    }
}

/// Label Studio settings (the same environment variables as Label Studio's ML backend SDK).
#[derive(Debug, Clone, Default)]
pub struct LabelStudioConfig {
    /// `LABEL_STUDIO_URL`: where relative task URLs (`/data/upload/...`) are fetched from.
    pub url: Option<String>,
    /// `LABEL_STUDIO_API_KEY`: sent as `Authorization: Token ...` to that host only.
    pub api_key: Option<String>,
    /// `BASIC_AUTH_USER`/`BASIC_AUTH_PASS`: required on every ML-backend route except `/health`.
    pub basic_auth: Option<(String, String)>,
    /// Hosts that may be fetched even though they resolve to private addresses.
    pub allowed_hosts: Vec<String>,
    /// Allow fetching from private/loopback addresses at all (off: SSRF protection).
    pub allow_private: bool,
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Image limits.
    pub limits: ImageLimits,
    /// Default thresholds.
    pub defaults: Thresholds,
    /// Label Studio.
    pub label_studio: LabelStudioConfig,
}

/// Shared state.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Inner>);

/// What the handlers share.
#[derive(Debug)]
pub struct Inner {
    /// The model.
    pub model: Model,
    /// Settings.
    pub settings: Settings,
    /// Metrics.
    pub metrics: Metrics,
    /// Readiness.
    pub health: Health,
    /// Label Studio hosts and tokens learnt from `/setup`, by project.
    pub ls_projects: Mutex<HashMap<String, (String, String)>>,
}

impl AppState {
    /// New state.
    pub fn new(model: Model, settings: Settings, metrics: Metrics, health: Health) -> AppState {
        AppState(Arc::new(Inner { model, settings, metrics, health, ls_projects: Mutex::new(HashMap::new()) }))
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// The one error type of the APIs. Ultralytics, OIP and Label Studio answer
/// `{"error": message, "code": CODE}` (Ultralytics' documented codes), Roboflow `{"message"}`
/// (see [`ApiError::respond`]); `Retry-After` on 429.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400.
    #[error("{0}")]
    BadRequest(String),
    /// 401.
    #[error("authentication required")]
    Unauthorized,
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 413.
    #[error("{0}")]
    TooLarge(String),
    /// 415.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 429.
    #[error("the server is at capacity; retry after {retry_after} s")]
    Overloaded {
        /// Seconds.
        retry_after: u64,
    },
    /// 502: a URL the request referred to could not be fetched.
    #[error("{0}")]
    Upstream(String),
    /// 503.
    #[error("the model is not ready")]
    NotReady,
    /// 500: the detail is logged, never sent (it may name files, devices or library internals).
    #[error("{0}")]
    Internal(String),
}

/// What a client is told of an internal error.
const INTERNAL_MESSAGE: &str = "internal error while running the model; the server's log has the details";

impl ApiError {
    fn status(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "VALIDATION_ERROR"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE"),
            ApiError::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE"),
            ApiError::Overloaded { .. } => (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED"),
            ApiError::Upstream(_) => (StatusCode::BAD_GATEWAY, "UPSTREAM_ERROR"),
            ApiError::NotReady => (StatusCode::SERVICE_UNAVAILABLE, "NOT_READY"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR"),
        }
    }
}

impl ApiError {
    /// The response, with the body in a protocol's error shape: `body(message, code)`. Internal
    /// errors are logged and answered with [`INTERNAL_MESSAGE`]; 429 carries `Retry-After` and 401
    /// `WWW-Authenticate`, whatever the shape.
    pub(crate) fn respond(self, body: impl FnOnce(String, &'static str) -> serde_json::Value) -> Response {
        let (status, code) = self.status();
        let message = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "request failed");
                INTERNAL_MESSAGE.to_string()
            }
            other => other.to_string(),
        };
        let mut resp = (status, Json(body(message, code))).into_response();
        if let ApiError::Overloaded { retry_after } = self
            && let Ok(v) = HeaderValue::from_str(&retry_after.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"ocellus\""));
        }
        resp
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.respond(|message, code| json!({"error": message, "code": code}))
    }
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::TooLarge(..) | ImageError::TooManyPixels(..) => ApiError::TooLarge(e.to_string()),
            ImageError::Unsupported => ApiError::UnsupportedMediaType(e.to_string()),
            ImageError::Empty | ImageError::Corrupt(_) => ApiError::BadRequest(e.to_string()),
        }
    }
}

impl From<InferError> for ApiError {
    fn from(e: InferError) -> Self {
        match e {
            InferError::Overloaded { retry_after } => ApiError::Overloaded { retry_after },
            InferError::Stopped => ApiError::NotReady,
            InferError::Failed(m) => ApiError::Internal(m),
        }
    }
}

/// Timings of one image, in milliseconds (as Ultralytics' `speed`).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Speed {
    /// Decode and letterbox.
    pub preprocess: f64,
    /// Queue and model.
    pub inference: f64,
    /// Decode of the output and NMS.
    pub postprocess: f64,
}

/// One image through the pipeline: decode, letterbox, model (batched), post-process.
/// Returns the predictions, the original `(height, width)` and the timings.
pub async fn predict_image(
    state: &AppState,
    bytes: bytes::Bytes,
    th: Thresholds,
) -> Result<(Vec<Prediction>, (u32, u32), Speed), ApiError> {
    // Refused only while the model loads: during a drain (readiness already false) requests that
    // still arrive are served.
    if !state.model.is_loaded() {
        return Err(ApiError::NotReady);
    }
    let t0 = Instant::now();
    let (limits, imgsz) = (state.settings.limits, state.model.info.imgsz);
    let ticket = state.model.batcher.ticket();
    let (input, lb, shape) = tokio::task::spawn_blocking(move || {
        let img = pipeline::decode_image(&bytes, limits)?;
        let (x, lb) = pipeline::preprocess(&img, imgsz);
        Ok::<_, ImageError>((x, lb, (img.height(), img.width())))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    let t1 = Instant::now();
    let out = state.model.batcher.infer(ticket, input).await?;
    let t2 = Instant::now();
    let preds = pipeline::postprocess(&state.model.info, &out, &lb, th);
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
    Ok((preds, shape, Speed { preprocess: ms(t0, t1), inference: ms(t1, t2), postprocess: ms(t2, Instant::now()) }))
}

/// Checks request thresholds.
pub fn thresholds(defaults: Thresholds, conf: Option<f64>, iou: Option<f64>) -> Result<Thresholds, ApiError> {
    let check = |name: &str, v: Option<f64>, d: f32| match v {
        None => Ok(d),
        Some(v) if v.is_finite() && (0.0..=1.0).contains(&v) => Ok(v as f32),
        Some(v) => Err(ApiError::BadRequest(format!("{name} must be a number between 0 and 1, got {v}"))),
    };
    Ok(Thresholds {
        conf: check("conf", conf, defaults.conf)?,
        iou: check("iou", iou, defaults.iou)?,
        max_det: defaults.max_det,
    })
}

/// `POST /predict`: Ultralytics (multipart) or Label Studio (JSON) by content type.
async fn predict(State(state): State<AppState>, req: Request) -> Response {
    let ct = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    if ct.starts_with("multipart/form-data") {
        return ultralytics::predict_request(state, req).await.into_response();
    }
    if ct.starts_with("application/json") {
        let headers = req.headers().clone();
        return match Json::<label_studio::PredictRequest>::from_request(req, &state).await {
            Ok(Json(body)) => label_studio::predict(State(state), headers, Json(body)).await.into_response(),
            Err(e) => {
                ApiError::BadRequest(format!("invalid Label Studio predict request: {}", e.body_text())).into_response()
            }
        };
    }
    ApiError::UnsupportedMediaType(format!(
        "POST /predict takes multipart/form-data (Ultralytics: a `file` field) or application/json (Label Studio); got {:?}",
        if ct.is_empty() { "no content type" } else { ct.as_str() }
    ))
    .into_response()
}

/// Which API a request belongs to (a metric label).
fn protocol(path: &str, content_type: &str) -> &'static str {
    if path.starts_with("/v2") {
        "oip"
    } else if path == "/predict" && content_type.starts_with("application/json") {
        "labelstudio"
    } else if path == "/predict" || path.starts_with("/api/") {
        "ultralytics"
    } else if matches!(path, "/setup" | "/webhook" | "/train" | "/versions" | "/health") {
        "labelstudio"
    } else if roboflow::owns(path) {
        "roboflow"
    } else {
        "other"
    }
}

/// Whether a request of `proto` runs the model (counted in the in-flight gauge the autoscaler reads).
fn is_scoring(method: &Method, path: &str, proto: &str) -> bool {
    method == Method::POST && (path.ends_with("/predict") || path.ends_with("/infer"))
        || proto == "roboflow" && roboflow::scores(method, path)
}

async fn track(State(state): State<AppState>, req: Request<Body>, next: Next) -> Response {
    let ct = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let path = req.uri().path().to_string();
    let proto = protocol(&path, &ct);
    let scoring = is_scoring(req.method(), &path, proto);
    if proto == "other" {
        return next.run(req).await;
    }
    let start = Instant::now();
    if scoring {
        state.metrics.inflight.inc();
    }
    let resp = next.run(req).await;
    if scoring {
        state.metrics.inflight.dec();
    }
    state.metrics.requests.with_label_values(&[proto, resp.status().as_str()]).inc();
    state.metrics.request_seconds.with_label_values(&[proto]).observe(start.elapsed().as_secs_f64());
    tracing::info!(protocol = proto, %path, status = resp.status().as_u16(), ms = start.elapsed().as_secs_f64() * 1e3, "request");
    resp
}

/// One route of the API: a method and path, and the handler that serves them.
pub(crate) struct Route {
    method: Method,
    path: &'static str,
    handler: MethodRouter<AppState>,
}

impl Route {
    /// `GET path`.
    pub(crate) fn get<H: Handler<T, AppState>, T: 'static>(path: &'static str, handler: H) -> Route {
        Route { method: Method::GET, path, handler: axum::routing::get(handler) }
    }

    /// `POST path`.
    pub(crate) fn post<H: Handler<T, AppState>, T: 'static>(path: &'static str, handler: H) -> Route {
        Route { method: Method::POST, path, handler: axum::routing::post(handler) }
    }
}

/// The route table [`app`] is built from: `POST /predict` (both protocols), then each protocol's.
/// Roboflow's legacy `/{project}/{version}` matches any two-segment path, but every other route is
/// static where it has two segments, and static segments win in axum's router.
fn table() -> Vec<Route> {
    let mut routes = vec![Route::post("/predict", predict)];
    routes.extend(ultralytics::routes());
    routes.extend(oip::routes());
    routes.extend(label_studio::routes());
    routes.extend(roboflow::routes());
    routes
}

/// Every API route as `(method, path)`, paths in axum's syntax (`/v2/models/{model}`); [`app`]
/// adds `/healthz`, `/readyz` and `/metrics`. Lists the routes without a model, so that a test can
/// check the routes the docs show.
pub fn routes() -> Vec<(Method, &'static str)> {
    table().into_iter().map(|r| (r.method, r.path)).collect()
}

/// The whole API: the route table, plus `/healthz`, `/readyz` and `/metrics`.
pub fn app(state: AppState) -> Router {
    let body_limit = state.settings.limits.max_bytes * 4 + (1 << 20);
    let api = table().into_iter().fold(Router::new(), |router, r| router.route(r.path, r.handler));
    Router::new()
        .merge(api.with_state(state.clone()))
        .layer(DefaultBodyLimit::max(body_limit.max(64 << 20)))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .merge(state.health.router())
}

#[cfg(test)]
mod error_tests {
    use super::*;

    async fn body(e: ApiError) -> (StatusCode, serde_json::Value) {
        let resp = e.into_response();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16).await.expect("body");
        (status, serde_json::from_slice(&bytes).expect("json"))
    }

    #[tokio::test]
    async fn internal_errors_hide_their_detail_and_client_errors_keep_theirs() {
        let (status, v) = body(ApiError::Internal("onnxruntime: /models/x.onnx: CUDA failure 700".into())).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(v, json!({"error": INTERNAL_MESSAGE, "code": "INTERNAL_ERROR"}));
        let (status, v) = body(ApiError::BadRequest("conf must be in [0, 1]".into())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(v["error"], "conf must be in [0, 1]");
    }
}

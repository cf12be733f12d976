//! Ultralytics predict: `POST /predict` and the platform's model- and deployment-scoped paths
//! (`/api/models/{id}/predict`, `/api/deployments/{id}/predict`). Multipart form with `file`
//! (JPEG, PNG, WebP; repeatable), `conf`, `iou`, `imgsz`; answers
//! `{"images": [{"shape": [h, w], "results": [{class, name, confidence, box}], "speed"}], "metadata"}`.

use axum::Json;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{ApiError, AppState, Route, predict_image, thresholds};

/// The model-scoped routes (`/predict` itself is dispatched in [`super::app`]).
pub(super) fn routes() -> Vec<Route> {
    vec![Route::post("/api/models/{id}/predict", scoped), Route::post("/api/deployments/{id}/predict", scoped)]
}

async fn scoped(State(state): State<AppState>, Path(_id): Path<String>, req: Request) -> Response {
    predict_request(state, req).await.into_response()
}

fn number(field: &str, text: &str) -> Result<f64, ApiError> {
    text.trim().parse::<f64>().map_err(|_| ApiError::BadRequest(format!("{field} must be a number, got {text:?}")))
}

/// Handles one Ultralytics predict request.
pub async fn predict_request(state: AppState, req: Request) -> Result<Json<serde_json::Value>, ApiError> {
    let ct =
        req.headers().get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    if !ct.to_ascii_lowercase().starts_with("multipart/form-data") {
        return Err(ApiError::UnsupportedMediaType(format!(
            "send multipart/form-data with a `file` field, not {ct:?}"
        )));
    }
    let mut form = Multipart::from_request(req, &state)
        .await
        .map_err(|e| ApiError::BadRequest(format!("invalid multipart body: {}", e.body_text())))?;
    let (mut files, mut conf, mut iou, mut imgsz) = (Vec::new(), None, None, None);
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| ApiError::BadRequest(format!("invalid multipart body: {}", e.body_text())))?
    {
        let name = field.name().unwrap_or("").to_string();
        match name.as_str() {
            "file" => {
                if let Some(ct) = field.content_type() {
                    let ct = ct.to_ascii_lowercase();
                    if !(ct.starts_with("image/") || ct == "application/octet-stream") {
                        return Err(ApiError::UnsupportedMediaType(format!(
                            "`file` has content type {ct:?}; send a JPEG, PNG or WebP image"
                        )));
                    }
                }
                let bytes = field
                    .bytes()
                    .await
                    .map_err(|e| ApiError::BadRequest(format!("reading `file`: {}", e.body_text())))?;
                if bytes.len() > state.settings.limits.max_bytes {
                    return Err(ApiError::TooLarge(format!(
                        "the image is {} bytes; the limit is {}",
                        bytes.len(),
                        state.settings.limits.max_bytes
                    )));
                }
                files.push(bytes);
            }
            "conf" | "iou" | "imgsz" => {
                let text = field.text().await.map_err(|e| ApiError::BadRequest(e.body_text()))?;
                let v = number(&name, &text)?;
                match name.as_str() {
                    "conf" => conf = Some(v),
                    "iou" => iou = Some(v),
                    _ => imgsz = Some(v),
                }
            }
            // Other fields (e.g. `model`) are ignored, as Ultralytics does.
            _ => {}
        }
    }
    if files.is_empty() {
        return Err(ApiError::BadRequest("no image: send it in a multipart field named `file`".into()));
    }
    if let Some(s) = imgsz
        && !(s.fract() == 0.0 && (32.0..=4096.0).contains(&s))
    {
        return Err(ApiError::BadRequest(format!("imgsz must be an integer between 32 and 4096, got {s}")));
    }
    let th = thresholds(state.settings.defaults, conf, iou)?;
    let n = files.len();
    // Concurrently, so that one request's images batch together; order is kept.
    let results = futures::future::join_all(files.into_iter().map(|b| predict_image(&state, b, th))).await;
    let mut images = Vec::with_capacity(n);
    for r in results {
        let (preds, (h, w), speed) = r?;
        images.push(json!({"shape": [h, w], "results": preds, "speed": speed}));
    }
    let m = &state.model;
    Ok(Json(json!({
        "images": images,
        "metadata": {
            "imageCount": n,
            "model": m.name,
            "version": m.version,
            "task": m.info.task,
            // Exported models have a fixed input size: this is the size used, whatever was asked.
            "imgsz": m.info.imgsz,
            "backend": m.backend.get().copied().unwrap_or("loading"),
        }
    })))
}

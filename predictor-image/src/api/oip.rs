//! Open Inference Protocol v2 (KServe / Triton REST): server and model health and metadata, and
//! `infer` with either
//! - the model's own tensor, `images` FP32 `[N, 3, S, S]` (letterboxed, 0–1), answered with the
//!   raw `output0` (`[N, 4 + nc, anchors]`, `[N, rows, 6]` end-to-end, or `[N, nc]`), or
//! - encoded images, a BYTES input of shape `[N]` (base64 strings in JSON, or raw bytes with
//!   Triton's binary-data extension), answered after the full pipeline with `boxes` `[K, 4]`
//!   (x1, y1, x2, y2 in original pixels), `scores` `[K]`, `classes` `[K]` and `batch_index` `[K]`
//!   for detectors, or top-5 `classes`/`scores` `[N, 5]` for classifiers.
//!
//! Request `parameters` may carry `conf` and `iou`.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use base64::Engine;
use ocellus_vision::model_info::{INPUT_NAME, OUTPUT_NAME};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState, Route, predict_image, thresholds};

/// The OIP routes.
pub(super) fn routes() -> Vec<Route> {
    vec![
        Route::get("/v2", server_metadata),
        Route::get("/v2/health/live", || async { Json(json!({"live": true})) }),
        Route::get("/v2/health/ready", server_ready),
        Route::get("/v2/models/{model}", model_metadata),
        Route::get("/v2/models/{model}/versions/{version}", model_metadata),
        Route::get("/v2/models/{model}/ready", model_ready),
        Route::get("/v2/models/{model}/versions/{version}/ready", model_ready),
        Route::post("/v2/models/{model}/infer", infer),
        Route::post("/v2/models/{model}/versions/{version}/infer", infer),
    ]
}

async fn server_metadata() -> Json<Value> {
    Json(
        json!({"name": "ocellus-predictor", "version": env!("CARGO_PKG_VERSION"), "extensions": ["binary_tensor_data"]}),
    )
}

/// 200 or 503 with `{"ready": bool}` (plus `extra` fields).
fn readiness(s: &AppState, mut body: Value) -> impl IntoResponse + use<> {
    let ready = s.health.is_ready();
    body["ready"] = json!(ready);
    (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(body))
}

async fn server_ready(State(s): State<AppState>) -> impl IntoResponse {
    readiness(&s, json!({}))
}

/// `{model}` and, on the `/versions/{version}` routes, `{version}` must be what is served.
fn check_model(s: &AppState, p: &HashMap<String, String>) -> Result<String, ApiError> {
    let model = p.get("model").map(String::as_str).unwrap_or_default();
    if model != s.model.name {
        return Err(ApiError::NotFound(format!(
            "model {model:?} is not served here (this server serves {:?})",
            s.model.name
        )));
    }
    if let Some(v) = p.get("version")
        && *v != s.model.version
    {
        return Err(ApiError::NotFound(format!(
            "version {v:?} of {model:?} is not served here (version {:?} is)",
            s.model.version
        )));
    }
    Ok(model.to_string())
}

fn metadata(s: &AppState) -> Value {
    let info = &s.model.info;
    let side = i64::from(info.imgsz);
    let mut out_shape = vec![-1i64];
    out_shape.extend(info.output_shape().iter().map(|d| *d as i64));
    let platform = match s.model.backend.get().copied() {
        Some("libtorch") => "pytorch_libtorch",
        Some("tensorrt") => "tensorrt_plan",
        _ => "onnxruntime_onnx",
    };
    json!({
        "name": s.model.name,
        "versions": [s.model.version],
        "platform": platform,
        "inputs": [
            {"name": INPUT_NAME, "datatype": if info.half { "FP16" } else { "FP32" }, "shape": [-1, 3, side, side]},
        ],
        "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": out_shape}],
        // Protocol extension parameters: the weights' precision (an INT8 model's calibration and
        // accuracy gate with it) and this CPU's INT8 instructions.
        "parameters": {
            "precision": info.precision(),
            "quantization": info.quantization,
            "cpu_int8": s.model.cpu_int8.to_string(),
        },
    })
}

async fn model_metadata(
    State(s): State<AppState>,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    check_model(&s, &p)?;
    Ok(Json(metadata(&s)))
}

async fn model_ready(
    State(s): State<AppState>,
    Path(p): Path<HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let name = check_model(&s, &p)?;
    Ok(readiness(&s, json!({"name": name})))
}

#[derive(Debug, Deserialize)]
struct InferRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<serde_json::Map<String, Value>>,
    inputs: Vec<InferInput>,
}

#[derive(Debug, Deserialize)]
struct InferInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    data: Option<Value>,
}

async fn infer(
    State(s): State<AppState>,
    Path(p): Path<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    check_model(&s, &p)?;
    run_infer(s, headers, body).await
}

fn flatten_numbers(v: &Value, out: &mut Vec<f32>) -> Result<(), ApiError> {
    match v {
        Value::Array(items) => items.iter().try_for_each(|i| flatten_numbers(i, out)),
        Value::Number(n) => {
            out.push(n.as_f64().ok_or_else(|| ApiError::BadRequest("tensor data must be numbers".into()))? as f32);
            Ok(())
        }
        _ => Err(ApiError::BadRequest("FP32 tensor data must be (nested) arrays of numbers".into())),
    }
}

fn flatten_strings(v: &Value, out: &mut Vec<Vec<u8>>) -> Result<(), ApiError> {
    match v {
        Value::Array(items) => items.iter().try_for_each(|i| flatten_strings(i, out)),
        Value::String(s) => {
            let b = base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .map_err(|e| ApiError::BadRequest(format!("BYTES data must be base64-encoded images: {e}")))?;
            out.push(b);
            Ok(())
        }
        _ => Err(ApiError::BadRequest("BYTES tensor data must be base64 strings".into())),
    }
}

/// Splits Triton's binary BYTES layout (4-byte little-endian length, then the bytes) into elements.
fn split_binary_bytes(mut raw: &[u8]) -> Result<Vec<Vec<u8>>, ApiError> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        if raw.len() < 4 {
            return Err(ApiError::BadRequest("truncated binary BYTES element".into()));
        }
        let n = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
        if raw.len() < 4 + n {
            return Err(ApiError::BadRequest("binary BYTES element longer than the data".into()));
        }
        out.push(raw[4..4 + n].to_vec());
        raw = &raw[4 + n..];
    }
    Ok(out)
}

async fn run_infer(s: AppState, headers: HeaderMap, body: Bytes) -> Result<Json<Value>, ApiError> {
    // Triton's binary extension: a JSON header of the given length, then the binary tensors.
    let (json_part, mut binary) = match headers.get("inference-header-content-length") {
        Some(v) => {
            let n: usize = v
                .to_str()
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| ApiError::BadRequest("Inference-Header-Content-Length must be a number".into()))?;
            if n > body.len() {
                return Err(ApiError::BadRequest("Inference-Header-Content-Length exceeds the body".into()));
            }
            (body.slice(..n), body.slice(n..))
        }
        None => (body.clone(), Bytes::new()),
    };
    let req: InferRequest = serde_json::from_slice(&json_part)
        .map_err(|e| ApiError::BadRequest(format!("invalid inference request: {e}")))?;
    if req.inputs.len() != 1 {
        return Err(ApiError::BadRequest(format!(
            "expected one input ({INPUT_NAME:?} FP32 or a BYTES image input), got {}",
            req.inputs.len()
        )));
    }
    let p = req.parameters.clone().unwrap_or_default();
    let th =
        thresholds(s.settings.defaults, p.get("conf").and_then(Value::as_f64), p.get("iou").and_then(Value::as_f64))?;
    let input = &req.inputs[0];
    if input.shape.iter().any(|d| *d < 0) {
        return Err(ApiError::BadRequest("input shape must not have negative dimensions".into()));
    }
    let binary_size =
        input.parameters.as_ref().and_then(|p| p.get("binary_data_size")).and_then(Value::as_u64).map(|n| n as usize);
    let raw = match binary_size {
        Some(n) if n <= binary.len() => Some(binary.split_to(n)),
        Some(_) => return Err(ApiError::BadRequest("binary_data_size exceeds the binary data".into())),
        None => None,
    };
    let mut outputs = Vec::new();
    match input.datatype.as_str() {
        "FP32" => {
            let info = &s.model.info;
            let side = i64::from(info.imgsz);
            if input.shape.len() != 4 || input.shape[1..] != [3, side, side] {
                return Err(ApiError::BadRequest(format!(
                    "{:?} must have shape [N, 3, {side}, {side}], got {:?}",
                    input.name, input.shape
                )));
            }
            let mut data = Vec::new();
            match (&raw, &input.data) {
                (Some(r), _) => {
                    if r.len() % 4 != 0 {
                        return Err(ApiError::BadRequest("binary FP32 data is not a multiple of 4 bytes".into()));
                    }
                    data = r.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                }
                (None, Some(v)) => flatten_numbers(v, &mut data)?,
                (None, None) => return Err(ApiError::BadRequest("the input has no data".into())),
            }
            let n = input.shape[0] as usize;
            let per = 3 * (side as usize).pow(2);
            if data.len() != n * per {
                return Err(ApiError::BadRequest(format!(
                    "shape {:?} needs {} values, got {}",
                    input.shape,
                    n * per,
                    data.len()
                )));
            }
            if !s.model.is_loaded() {
                return Err(ApiError::NotReady);
            }
            let futs = data.chunks(per).map(|c| s.model.batcher.infer(s.model.batcher.ticket(), c.to_vec()));
            let mut flat = Vec::new();
            let mut per_out = 0;
            for r in futures::future::join_all(futs).await {
                let o = r?;
                per_out = o.len();
                flat.extend(o);
            }
            let mut shape = vec![n];
            shape.extend(info.output_shape());
            debug_assert_eq!(per_out, info.output_shape().iter().product::<usize>());
            outputs.push(json!({"name": OUTPUT_NAME, "datatype": "FP32", "shape": shape, "data": flat}));
        }
        "BYTES" => {
            let images = match (&raw, &input.data) {
                (Some(r), _) => split_binary_bytes(r)?,
                (None, Some(v)) => {
                    let mut out = Vec::new();
                    flatten_strings(v, &mut out)?;
                    out
                }
                (None, None) => return Err(ApiError::BadRequest("the input has no data".into())),
            };
            let want: i64 = input.shape.iter().product();
            if images.len() as i64 != want || images.is_empty() {
                return Err(ApiError::BadRequest(format!(
                    "shape {:?} needs {want} images, got {}",
                    input.shape,
                    images.len()
                )));
            }
            let n = images.len();
            let results = futures::future::join_all(images.into_iter().map(|b| predict_image(&s, b.into(), th))).await;
            if s.model.info.is_detect() {
                let (mut boxes, mut scores, mut classes, mut index) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                for (i, r) in results.into_iter().enumerate() {
                    for p in r?.0 {
                        if let Some(b) = p.bbox {
                            boxes.extend([b.x1, b.y1, b.x2, b.y2]);
                        }
                        scores.push(p.confidence);
                        classes.push(p.class as i64);
                        index.push(i as i64);
                    }
                }
                let k = scores.len();
                outputs.push(json!({"name": "boxes", "datatype": "FP32", "shape": [k, 4], "data": boxes}));
                outputs.push(json!({"name": "scores", "datatype": "FP32", "shape": [k], "data": scores}));
                outputs.push(json!({"name": "classes", "datatype": "INT64", "shape": [k], "data": classes}));
                outputs.push(json!({"name": "batch_index", "datatype": "INT64", "shape": [k], "data": index}));
            } else {
                let (mut scores, mut classes) = (Vec::new(), Vec::new());
                let k = 5.min(s.model.info.names.len());
                for r in results {
                    let preds = r?.0;
                    for j in 0..k {
                        scores.push(preds.get(j).map_or(0.0, |p| p.confidence));
                        classes.push(preds.get(j).map_or(-1, |p| p.class as i64));
                    }
                }
                outputs.push(json!({"name": "scores", "datatype": "FP32", "shape": [n, k], "data": scores}));
                outputs.push(json!({"name": "classes", "datatype": "INT64", "shape": [n, k], "data": classes}));
            }
        }
        other => {
            return Err(ApiError::BadRequest(format!(
                "unsupported datatype {other:?}: use FP32 ({INPUT_NAME:?}) or BYTES (encoded images)"
            )));
        }
    }
    let mut resp = json!({"model_name": s.model.name, "model_version": s.model.version, "outputs": outputs});
    if let Some(id) = req.id {
        resp["id"] = json!(id);
    }
    Ok(Json(resp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_bytes_elements() {
        let mut raw = Vec::new();
        for e in [&b"abc"[..], &b""[..], &b"xy"[..]] {
            raw.extend((e.len() as u32).to_le_bytes());
            raw.extend(e);
        }
        assert_eq!(split_binary_bytes(&raw).expect("ok"), vec![b"abc".to_vec(), vec![], b"xy".to_vec()]);
        assert!(split_binary_bytes(&raw[..raw.len() - 1]).is_err());
        assert!(split_binary_bytes(&[1, 0]).is_err());
    }

    #[test]
    fn nested_numbers_flatten() {
        let mut out = Vec::new();
        flatten_numbers(&json!([[1, 2.5], [3]]), &mut out).expect("ok");
        assert_eq!(out, vec![1.0, 2.5, 3.0]);
        assert!(flatten_numbers(&json!(["a"]), &mut Vec::new()).is_err());
    }
}

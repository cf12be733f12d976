//! The Label Studio ML backend protocol, as Label Studio 1.23 calls it:
//! `GET /health`, `POST /setup`, `POST /predict` (JSON; see [`super::app`]), `POST /webhook`,
//! `POST /train` (legacy) and `GET /versions`. No authentication unless basic auth is configured
//! (`BASIC_AUTH_USER`/`BASIC_AUTH_PASS`), as in Label Studio's ML backend SDK.
//!
//! The label config is parsed on every call (the server keeps no per-project state beyond the
//! Label Studio host and token `/setup` reports): model classes map to `<Label value>`s by name
//! (case-insensitive) or by a label's `predicted_values="a,b"` attribute; classes with no label
//! are left out. Task images are fetched by URL with a size cap; relative URLs
//! (`/data/upload/...`) go to the Label Studio host with its token; other hosts must not resolve
//! to private addresses unless allowed (SSRF).

use std::net::IpAddr;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{ApiError, AppState, Route, predict_image};
use crate::pipeline::Prediction;

/// The Label Studio routes (`POST /predict` is dispatched in [`super::app`]).
pub(super) fn routes() -> Vec<Route> {
    vec![
        Route::get("/health", health),
        Route::post("/setup", setup),
        Route::post("/webhook", webhook),
        Route::post("/train", webhook),
        Route::get("/versions", versions),
    ]
}

fn model_version(s: &AppState) -> String {
    format!("{}-{}", s.model.name, s.model.version)
}

/// Constant-time equality of two secrets (compared through their SHA-256).
fn secret_eq(a: &str, b: &str) -> bool {
    let (x, y) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    x.iter().zip(y.iter()).fold(0u8, |acc, (p, q)| acc | (p ^ q)) == 0
}

fn check_auth(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some((user, pass)) = &s.settings.label_studio.basic_auth else { return Ok(()) };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or(ApiError::Unauthorized)?;
    let (u, p) = given.split_once(':').ok_or(ApiError::Unauthorized)?;
    // Both compared, always: no early exit on the user name.
    let ok = secret_eq(u, user) & secret_eq(p, pass);
    if ok { Ok(()) } else { Err(ApiError::Unauthorized) }
}

async fn health(State(s): State<AppState>) -> impl IntoResponse {
    if s.health.is_ready() {
        (
            StatusCode::OK,
            Json(json!({"status": "UP", "model_class": "OcellusYOLO", "model_version": model_version(&s)})),
        )
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "DOWN", "model_class": "OcellusYOLO"})))
    }
}

/// What the label config says about where predictions go.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// `from_name`: the `RectangleLabels` or `Choices` control.
    pub from_name: String,
    /// `to_name`: the `Image` object.
    pub to_name: String,
    /// Task data key of the image (`$image` → `image`).
    pub data_key: String,
    /// `rectanglelabels` or `choices`.
    pub kind: &'static str,
    /// Model class → Label Studio label.
    pub labels: Vec<Option<String>>,
}

/// Parses a label config for a model with `names` (`detect`: `RectangleLabels`; `classify`: `Choices`).
pub fn parse_label_config(xml: &str, names: &[String], detect: bool) -> Result<Target, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("the label config is not valid XML: {e}"))?;
    let control = if detect { "RectangleLabels" } else { "Choices" };
    let child = if detect { "Label" } else { "Choice" };
    let images: Vec<roxmltree::Node> = doc.descendants().filter(|n| n.has_tag_name("Image")).collect();
    let ctl = doc
        .descendants()
        .find(|n| {
            n.has_tag_name(control)
                && n.attribute("toName").is_some_and(|t| images.iter().any(|i| i.attribute("name") == Some(t)))
        })
        .ok_or_else(|| {
            format!(
                "the label config has no <{control}> whose toName is an <Image>: this {} model cannot fill it",
                if detect { "detection" } else { "classification" }
            )
        })?;
    let to_name = ctl.attribute("toName").unwrap_or_default().to_string();
    let image = images.iter().find(|i| i.attribute("name") == Some(to_name.as_str())).ok_or("no image")?;
    let data_key = image.attribute("value").unwrap_or("$image").trim_start_matches('$').to_string();
    let mut labels: Vec<Option<String>> = vec![None; names.len()];
    for l in ctl.children().filter(|n| n.has_tag_name(child)) {
        let Some(value) = l.attribute("value") else { continue };
        let aliases: Vec<String> = match l.attribute("predicted_values") {
            Some(p) => p.split(',').map(|s| s.trim().to_lowercase()).filter(|s| !s.is_empty()).collect(),
            None => vec![value.to_lowercase()],
        };
        for (i, n) in names.iter().enumerate() {
            if labels[i].is_none() && aliases.contains(&n.to_lowercase()) {
                labels[i] = Some(value.to_string());
            }
        }
    }
    if labels.iter().all(Option::is_none) {
        return Err(format!(
            "none of the model's classes {names:?} matches a <{child}> of <{control} name={:?}> (match by value or predicted_values)",
            ctl.attribute("name").unwrap_or("")
        ));
    }
    Ok(Target {
        from_name: ctl.attribute("name").unwrap_or_default().to_string(),
        to_name,
        data_key,
        kind: if detect { "rectanglelabels" } else { "choices" },
        labels,
    })
}

#[derive(Debug, Deserialize)]
struct SetupRequest {
    #[serde(default)]
    project: Option<Value>,
    #[serde(default)]
    schema: Option<String>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

fn project_key(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Object(o) => o.get("id").map(|i| i.to_string()).unwrap_or_default(),
        _ => String::new(),
    };
    // Label Studio sends "<id>.<timestamp>".
    s.split('.').next().unwrap_or_default().to_string()
}

async fn setup(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    check_auth(&s, &headers)?;
    let req: SetupRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid setup request: {e}")))?;
    let schema =
        req.schema.ok_or_else(|| ApiError::BadRequest("setup needs `schema` (the project's label config)".into()))?;
    parse_label_config(&schema, &s.model.info.names, s.model.info.is_detect()).map_err(ApiError::BadRequest)?;
    if let (Some(p), Some(host)) = (req.project.as_ref(), req.hostname.filter(|h| !h.is_empty()))
        && let Ok(mut m) = s.ls_projects.lock()
    {
        m.insert(project_key(p), (host.trim_end_matches('/').to_string(), req.access_token.unwrap_or_default()));
    }
    Ok(Json(json!({"model_version": model_version(&s)})))
}

/// `POST /predict` (JSON) body.
#[derive(Debug, Deserialize)]
pub struct PredictRequest {
    /// Full task JSON.
    pub tasks: Vec<Value>,
    /// `"<id>.<timestamp>"`.
    #[serde(default)]
    pub project: Option<Value>,
    /// The project's label config.
    #[serde(default)]
    pub label_config: Option<String>,
    /// `{login, password, context}`.
    #[serde(default)]
    pub params: Option<Value>,
}

/// `POST /predict` from Label Studio: exactly one result entry per task, in order.
pub async fn predict(
    State(s): State<AppState>,
    headers: HeaderMap,
    Json(req): Json<PredictRequest>,
) -> Result<Json<Value>, ApiError> {
    check_auth(&s, &headers)?;
    let config =
        req.label_config.as_deref().ok_or_else(|| ApiError::BadRequest("predict needs `label_config`".into()))?;
    let target =
        parse_label_config(config, &s.model.info.names, s.model.info.is_detect()).map_err(ApiError::BadRequest)?;
    let project = req.project.as_ref().map(project_key).unwrap_or_default();
    let version = model_version(&s);
    let futs = req.tasks.iter().map(|t| predict_task(&s, t, &target, &project));
    let results = futures::future::join_all(futs).await;
    let entries: Vec<Value> = results
        .into_iter()
        .zip(&req.tasks)
        .map(|(r, task)| match r {
            Ok((result, score)) => json!({"result": result, "score": score, "model_version": version}),
            Err(e) => {
                let id = task.get("id").cloned().unwrap_or_default();
                tracing::warn!(task = %id, error = %e, "Label Studio task not predicted");
                json!({"result": [], "score": 0.0, "model_version": version})
            }
        })
        .collect();
    Ok(Json(json!({"results": entries})))
}

async fn predict_task(
    s: &AppState,
    task: &Value,
    target: &Target,
    project: &str,
) -> Result<(Vec<Value>, f32), ApiError> {
    let url = task
        .get("data")
        .and_then(|d| d.get(&target.data_key))
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::BadRequest(format!("task has no data.{}", target.data_key)))?;
    let bytes = fetch_image(s, url, project).await?;
    let (preds, (h, w), _) = predict_image(s, bytes, s.settings.defaults).await?;
    Ok(to_results(&preds, target, w, h))
}

/// Label Studio result items (percent coordinates of the original image) and the task score.
pub fn to_results(preds: &[Prediction], target: &Target, width: u32, height: u32) -> (Vec<Value>, f32) {
    let (w, h) = (width.max(1) as f32, height.max(1) as f32);
    let mut items = Vec::new();
    let mut scores = Vec::new();
    for (i, p) in preds.iter().enumerate() {
        let Some(Some(label)) = target.labels.get(p.class) else { continue };
        let value = match (target.kind, p.bbox) {
            ("rectanglelabels", Some(b)) => json!({
                "x": b.x1 / w * 100.0, "y": b.y1 / h * 100.0,
                "width": (b.x2 - b.x1) / w * 100.0, "height": (b.y2 - b.y1) / h * 100.0,
                "rotation": 0, "rectanglelabels": [label],
            }),
            ("choices", _) => json!({"choices": [label]}),
            _ => continue,
        };
        scores.push(p.confidence);
        items.push(json!({
            "id": format!("ocellus-{i}"), "from_name": target.from_name, "to_name": target.to_name, "type": target.kind,
            "original_width": width, "original_height": height, "image_rotation": 0, "value": value, "score": p.confidence,
        }));
        if target.kind == "choices" {
            break;
        }
    }
    let score = if scores.is_empty() { 0.0 } else { scores.iter().sum::<f32>() / scores.len() as f32 };
    (items, score)
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => {
            v.is_private()
                || v.is_loopback()
                || v.is_link_local()
                || v.is_unspecified()
                || v.is_broadcast()
                || v.is_multicast()
                || v.octets()[0] == 100 && (v.octets()[1] & 0xc0) == 64
        }
        IpAddr::V6(v) => {
            v.is_loopback()
                || v.is_unspecified()
                || v.is_multicast()
                || (v.segments()[0] & 0xfe00) == 0xfc00
                || (v.segments()[0] & 0xffc0) == 0xfe80
                || v.to_ipv4_mapped().is_some_and(|m| is_private(IpAddr::V4(m)))
        }
    }
}

/// Fetches a task image: `data:` URIs, URLs relative to Label Studio (the project's host learnt
/// from `/setup`, else `LABEL_STUDIO_URL`), or absolute http(s) URLs; see [`fetch_url`].
async fn fetch_image(s: &AppState, url: &str, project: &str) -> Result<bytes::Bytes, ApiError> {
    let cfg = &s.settings.label_studio;
    let learnt = s.ls_projects.lock().ok().and_then(|m| m.get(project).cloned());
    let (host, token) = match learnt {
        Some((h, t)) => (Some(h), Some(t).filter(|t| !t.is_empty()).or_else(|| cfg.api_key.clone())),
        None => (cfg.url.clone().map(|u| u.trim_end_matches('/').to_string()), cfg.api_key.clone()),
    };
    fetch_url(s, url, UrlOrigin::LabelStudio { host, token }).await
}

/// Who gave an image URL, which decides what it may reach and with which credentials.
#[derive(Debug, Clone)]
pub(super) enum UrlOrigin {
    /// A Label Studio task: relative URLs go to Label Studio's host, and requests to that host
    /// carry its token (and may reach it on a private address).
    LabelStudio {
        /// Label Studio's base URL, if known.
        host: Option<String>,
        /// Its API token.
        token: Option<String>,
    },
    /// A client's own URL (Roboflow's `type: url`): absolute http(s) or `data:` only, never a
    /// credential, private addresses only for `--allow-fetch-host` hosts.
    Client,
}

/// Fetches an image by URL: `data:` URIs (base64), or http(s) URLs with the image size cap, no
/// redirects, and the SSRF rules: a host resolving to a private address is refused unless it is
/// Label Studio's (for [`UrlOrigin::LabelStudio`]), allowed by `--allow-fetch-host`, or private
/// fetches are allowed; the connection is pinned to the address checked.
pub(super) async fn fetch_url(s: &AppState, url: &str, origin: UrlOrigin) -> Result<bytes::Bytes, ApiError> {
    let max = s.settings.limits.max_bytes;
    if let Some(rest) = url.strip_prefix("data:") {
        let (_, b64) = rest
            .split_once(";base64,")
            .ok_or_else(|| ApiError::BadRequest("only base64 data: URIs are supported".into()))?;
        let b = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| ApiError::BadRequest(format!("data: URI: {e}")))?;
        return Ok(b.into());
    }
    let cfg = &s.settings.label_studio;
    let from_client = matches!(origin, UrlOrigin::Client);
    let (ls_host, ls_token) = match origin {
        UrlOrigin::LabelStudio { host, token } => (host, token),
        UrlOrigin::Client => (None, None),
    };
    let full = if url.starts_with('/') {
        let host = ls_host.clone().ok_or_else(|| {
            ApiError::BadRequest(if from_client {
                format!("image URL {url:?} is not absolute: send an http(s) URL")
            } else {
                format!(
                    "{url:?} is relative to Label Studio, whose URL is unknown (run setup, or set LABEL_STUDIO_URL)"
                )
            })
        })?;
        format!("{host}{url}")
    } else {
        url.to_string()
    };
    let parsed = reqwest::Url::parse(&full).map_err(|e| ApiError::BadRequest(format!("image URL {full:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ApiError::BadRequest(format!(
            "image URL scheme {:?} is not supported (http, https, data)",
            parsed.scheme()
        )));
    }
    let host = parsed.host_str().unwrap_or_default().to_string();
    let port = parsed.port_or_known_default().unwrap_or(80);
    let ls_parsed = ls_host.as_deref().and_then(|h| reqwest::Url::parse(h).ok());
    let is_ls = ls_parsed
        .as_ref()
        .is_some_and(|l| l.host_str() == Some(host.as_str()) && l.port_or_known_default() == Some(port));
    let trusted = is_ls || cfg.allowed_hosts.iter().any(|h| h == &host) || cfg.allow_private;
    // Resolve once, check, and pin the connection to what was checked (no DNS rebinding).
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| ApiError::Upstream(format!("cannot resolve {host}: {e}")))?
        .collect();
    let addr = *addrs.first().ok_or_else(|| ApiError::Upstream(format!("{host} has no address")))?;
    if !trusted && addrs.iter().any(|a| is_private(a.ip())) {
        return Err(ApiError::BadRequest(format!(
            "refusing to fetch {host}: it resolves to a private address (allow it with --allow-fetch-host)"
        )));
    }
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .resolve(&host, addr)
        .build()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut req = client.get(parsed);
    if is_ls && let Some(t) = ls_token.filter(|t| !t.is_empty()) {
        req = req.header(header::AUTHORIZATION, format!("Token {t}"));
    }
    let mut resp = req.send().await.map_err(|e| ApiError::Upstream(format!("fetching the image: {e}")))?;
    if !resp.status().is_success() {
        return Err(ApiError::Upstream(format!("fetching the image: HTTP {}", resp.status())));
    }
    if resp.content_length().is_some_and(|n| n as usize > max) {
        return Err(ApiError::TooLarge(format!("the image at the URL is larger than {max} bytes")));
    }
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| ApiError::Upstream(e.to_string()))? {
        if buf.len() + chunk.len() > max {
            return Err(ApiError::TooLarge(format!("the image at the URL is larger than {max} bytes")));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.into())
}

/// `POST /webhook` and `POST /train`: Label Studio's training events. Training runs as a
/// TrainingJob on the platform, not in this server, so events are acknowledged with no job.
async fn webhook(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, ApiError> {
    check_auth(&s, &headers)?;
    let v: Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid webhook body: {e}")))?;
    let action = v.get("action").and_then(Value::as_str).unwrap_or("");
    const TRAIN_EVENTS: [&str; 4] =
        ["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "START_TRAINING"];
    if !TRAIN_EVENTS.contains(&action) && !action.is_empty() {
        return Ok((StatusCode::OK, Json(json!({"status": "Unknown event"}))));
    }
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"job": Value::Null, "status": "training runs as an Ocellus TrainingJob; this predictor does not train"}),
        ),
    ))
}

async fn versions(State(s): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    check_auth(&s, &headers)?;
    Ok(Json(json!({"versions": [model_version(&s)]})))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::BoxXyxy;

    const CONFIG: &str = r#"<View>
  <Image name="img" value="$photo" zoom="true"/>
  <RectangleLabels name="tag" toName="img">
    <Label value="Circle" background="red"/>
    <Label value="Box" predicted_values="square,rectangle"/>
    <Label value="Other"/>
  </RectangleLabels>
</View>"#;

    fn names() -> Vec<String> {
        vec!["circle".into(), "square".into(), "triangle".into()]
    }

    #[test]
    fn label_config_maps_classes() {
        let t = parse_label_config(CONFIG, &names(), true).expect("ok");
        assert_eq!((t.from_name.as_str(), t.to_name.as_str(), t.data_key.as_str()), ("tag", "img", "photo"));
        assert_eq!(t.labels, vec![Some("Circle".into()), Some("Box".into()), None]);
        assert!(
            parse_label_config("<View><Image name='i' value='$image'/></View>", &names(), true)
                .expect_err("no control")
                .contains("RectangleLabels")
        );
        assert!(parse_label_config("<View", &names(), true).expect_err("xml").contains("not valid XML"));
        assert!(
            parse_label_config(CONFIG, &["dog".into()], true)
                .expect_err("no match")
                .contains("none of the model's classes")
        );
        assert!(parse_label_config(CONFIG, &names(), false).is_err(), "a classifier needs <Choices>");
    }

    #[test]
    fn results_are_percentages_of_the_original() {
        let t = parse_label_config(CONFIG, &names(), true).expect("ok");
        let p = |class, conf| Prediction {
            class,
            name: String::new(),
            confidence: conf,
            bbox: Some(BoxXyxy { x1: 20.0, y1: 10.0, x2: 60.0, y2: 50.0 }),
        };
        let (items, score) = to_results(&[p(0, 0.9), p(2, 0.8), p(1, 0.5)], &t, 200, 100);
        assert_eq!(items.len(), 2, "triangle has no label");
        let v = &items[0]["value"];
        assert_eq!(
            (v["x"].as_f64(), v["y"].as_f64(), v["width"].as_f64(), v["height"].as_f64()),
            (Some(10.0), Some(10.0), Some(20.0), Some(40.0))
        );
        assert_eq!(items[1]["value"]["rectanglelabels"][0], "Box");
        assert_eq!((items[0]["original_width"].as_u64(), items[0]["from_name"].as_str()), (Some(200), Some("tag")));
        assert!((score - 0.7).abs() < 1e-6);
    }

    #[test]
    fn private_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.5",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_private(ip.parse().expect("ip")), "{ip}");
        }
        assert!(!is_private("8.8.8.8".parse().expect("ip")));
        assert!(secret_eq("a", "a") && !secret_eq("a", "b"));
    }
}

//! Deployments: every `ModelDeployment` of the workspace, read through the Ultralytics API, and
//! predictions through it.
//!
//! - `GET /api/deployments/{owner}` and `GET /api/deployments/{owner}/{deployment}`: the
//!   ModelDeployments of the key's namespace, however they were created (kubectl, GitOps);
//! - `POST /api/deployments/{owner}/{deployment}/predict`: handed in-process to the gateway as
//!   `/{owner}/{deployment}/predict`, so it is held while the deployment wakes from zero, like
//!   any gateway request. The key stays with the apiserver: the gateway removes it.
//!
//! - `POST /api/deployments/{owner} {project, model, deployment?, name?, cpu?, memoryGi?}`: a
//!   ModelDeployment serving the model's newest completed ONNX export, else its `best` weights
//!   (which the operator exports to TorchScript first), one replica, labelled with the project
//!   and model;
//! - `PATCH /api/deployments/{owner}/{deployment}`: `{action: stop|start}` sets `spec.stopped`,
//!   `{action: resize, cpu?, memoryGi?}` the pods' resources, `{action: replace, project, model}`
//!   the model, `{name}` the display name;
//! - `DELETE /api/deployments/{owner}/{deployment}`;
//! - `GET /api/deployments/{owner}/{deployment}/health`: the predictor's `/health` through the
//!   gateway, timed; `GET .../logs`: the predictor pods' log lines of the last 24 hours;
//! - the reference's id forms, with the owner the key's namespace: `GET|POST /api/deployments`
//!   (`?owner`, `modelId`, `status`, `limit`; create from `{modelId, name, region, resources}`),
//!   `GET|DELETE /api/deployments/{dp_id}`, `POST .../{dp_id}/start|stop|predict`, `GET
//!   .../{dp_id}/health|logs`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kube::ResourceExt;
use ocellus_crds::{
    CheckpointKind, DeploymentPhase, ExportFormat, ExportPhase, LocalRef, ModelDeployment, ModelDeploymentSpec,
    ModelSource, PredictorResources, TrainingJobCheckpointRef,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::datasets::{DISPLAY_NAME, MANAGED_BY, Success};
use super::models::MODEL;
use super::projects::PROJECT;
use super::{REGION, UltralyticsApi, own_workspace, rfc3339};
use crate::api::{Action, ApiError, ApiJson, Principal};

pub(super) fn routes() -> Router<UltralyticsApi> {
    Router::new()
        .route("/api/deployments", get(list_own).post(create_by_model_id).fallback(super::compat::fallback))
        .route(
            "/api/deployments/{owner}",
            get(list_or_retrieve_by_id).post(create).delete(delete_by_id).fallback(super::compat::fallback),
        )
        .route(
            "/api/deployments/{owner}/{deployment}",
            get(get_item).post(post_by_id).patch(update).delete(delete).fallback(super::compat::fallback),
        )
        .route("/api/deployments/{owner}/{deployment}/predict", post(predict).fallback(super::compat::fallback))
        .route("/api/deployments/{owner}/{deployment}/health", get(health).fallback(super::compat::fallback))
        .route("/api/deployments/{owner}/{deployment}/logs", get(logs).fallback(super::compat::fallback))
}

/// A deployment as lists and `retrieve` show it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentItem {
    /// `dp_` and the ModelDeployment's uid.
    pub id: String,
    /// The workspace.
    pub owner: String,
    /// The ModelDeployment's name.
    pub deployment: String,
    /// Display name (the name).
    pub name: String,
    /// `creating`, `deploying`, `ready` (serving, or at zero replicas and woken by the next
    /// request), `stopping`, `stopped` or `failed`.
    pub status: String,
    /// The Ready condition's message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    /// Always `us`.
    pub region: String,
    /// CPU, memory and replica bounds of the predictor pods.
    pub resources: DeploymentResources,
    /// Where to send predictions: the gateway address `<origin>/<owner>/<deployment>` (append a
    /// predictor route, e.g. `/predict`).
    pub service_url: String,
    /// The served model's version (its SHA-256 prefix), once resolved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// Last scale change, else the creation time.
    pub updated_at: String,
}

/// Resources of a deployment, in the platform's units.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentResources {
    /// CPU cores per pod.
    pub cpu: f64,
    /// Memory per pod in GiB.
    pub memory_gi: f64,
    /// Least replicas (0 scales to zero).
    pub min_instances: i32,
    /// Most replicas.
    pub max_instances: i32,
}

/// A Kubernetes quantity in base units (cores, bytes), for the common suffixes.
fn quantity(q: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 10] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("m", 0.001),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("", 1.0),
    ];
    SUFFIXES.iter().find_map(|(s, f)| q.strip_suffix(s).and_then(|n| n.parse::<f64>().ok()).map(|n| n * f))
}

/// The platform status of a ModelDeployment (pure).
pub fn status_of(md: &ModelDeployment) -> &'static str {
    let Some(st) = md.status.as_ref() else { return "creating" };
    match st.phase {
        DeploymentPhase::Pending => "creating",
        DeploymentPhase::Deploying => "deploying",
        DeploymentPhase::Ready | DeploymentPhase::ScaledToZero => "ready",
        DeploymentPhase::Stopped | DeploymentPhase::Expired if st.replicas > 0 => "stopping",
        DeploymentPhase::Stopped | DeploymentPhase::Expired => "stopped",
        DeploymentPhase::Failed => "failed",
    }
}

/// The item of a ModelDeployment, its gateway address under `origin` (pure).
pub fn deployment_item(md: &ModelDeployment, origin: &str) -> DeploymentItem {
    let ns = md.namespace().unwrap_or_default();
    let name = md.name_any();
    let st = md.status.clone().unwrap_or_default();
    let created = md.metadata.creation_timestamp.as_ref().map(rfc3339).unwrap_or_default();
    let r = &md.spec.resources;
    DeploymentItem {
        id: format!("dp_{}", md.metadata.uid.as_deref().unwrap_or_default().replace('-', "")),
        owner: ns.clone(),
        deployment: name.clone(),
        name: md.annotations().get(DISPLAY_NAME).cloned().unwrap_or_else(|| name.clone()),
        status: status_of(md).into(),
        status_message: st.common.conditions.iter().find(|c| c.type_ == "Ready").and_then(|c| c.message.clone()),
        region: REGION.into(),
        resources: DeploymentResources {
            cpu: quantity(&r.cpu).unwrap_or(0.0),
            memory_gi: quantity(&r.memory).map(|b| b / 1073741824.0).unwrap_or(0.0),
            min_instances: md.spec.scaling.min_replicas,
            max_instances: md.spec.scaling.max_replicas,
        },
        service_url: format!("{origin}/{ns}/{name}"),
        model_version: st.model_version.clone(),
        updated_at: st.last_scale_time.as_ref().map(rfc3339).unwrap_or_else(|| created.clone()),
        created_at: created,
    }
}

/// `http://<Host>` of the request: the address the client used.
pub(crate) fn origin(headers: &HeaderMap) -> String {
    let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let proto = headers.get("x-forwarded-proto").and_then(|h| h.to_str().ok()).unwrap_or("http");
    format!("{proto}://{host}")
}

fn find(api: &UltralyticsApi, ns: &str, name: &str) -> Result<Arc<ModelDeployment>, ApiError> {
    let by_id = name.starts_with("dp_");
    api.deployments_in(ns)
        .into_iter()
        .find(|m| if by_id { deployment_item(m, "").id == name } else { m.metadata.name.as_deref() == Some(name) })
        .ok_or_else(|| ApiError::NotFound(format!("deployment '{name}'")))
}

/// List query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only deployments with this status.
    pub status: Option<String>,
    /// Most items to return.
    pub limit: Option<usize>,
}

/// `GET /api/deployments/{owner}` response.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeploymentList {
    /// By name.
    pub deployments: Vec<DeploymentItem>,
    /// Deployments matching (before `limit`).
    pub total: usize,
    /// Always `us`.
    pub region: String,
}

/// The workspace's deployments.
#[utoipa::path(get, path = "/api/deployments/{owner}", tag = "ultralytics",
    params(("owner" = String, Path), ListQuery),
    responses((status = 200, body = DeploymentList), (status = 404, body = crate::api::error::ErrorBody), crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn list(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    headers: HeaderMap,
    Path(owner): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<DeploymentList>, ApiError> {
    principal.require(Action::Read)?;
    let ns = own_workspace(&principal, &owner)?;
    let origin = origin(&headers);
    let mut items: Vec<DeploymentItem> = api
        .deployments_in(ns)
        .iter()
        .map(|m| deployment_item(m, &origin))
        .filter(|i| q.status.as_deref().is_none_or(|s| i.status == s))
        .collect();
    items.sort_by(|a, b| a.deployment.cmp(&b.deployment));
    let total = items.len();
    items.truncate(q.limit.unwrap_or(usize::MAX));
    Ok(Json(DeploymentList { deployments: items, total, region: REGION.into() }))
}

/// `GET /api/deployments/{owner}/{deployment}` response.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RetrievedDeployment {
    /// The deployment.
    pub deployment: DeploymentItem,
    /// Always `us`.
    pub region: String,
}

/// One deployment (by name or `dp_` id).
#[utoipa::path(get, path = "/api/deployments/{owner}/{deployment}", tag = "ultralytics",
    params(("owner" = String, Path), ("deployment" = String, Path)),
    responses((status = 200, body = RetrievedDeployment), (status = 404, body = crate::api::error::ErrorBody), crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn retrieve(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    headers: HeaderMap,
    Path((owner, deployment)): Path<(String, String)>,
) -> Result<Json<RetrievedDeployment>, ApiError> {
    principal.require(Action::Read)?;
    let ns = own_workspace(&principal, &owner)?;
    let md = find(&api, ns, &deployment)?;
    Ok(Json(RetrievedDeployment { deployment: deployment_item(&md, &origin(&headers)), region: REGION.into() }))
}

/// A prediction: multipart `file` (and `conf`, `iou`, `imgsz`), answered by the deployment's
/// predictor in the Ultralytics format; held while the deployment wakes from zero.
#[utoipa::path(post, path = "/api/deployments/{owner}/{deployment}/predict", tag = "ultralytics",
    params(("owner" = String, Path), ("deployment" = String, Path)),
    responses((status = 200, description = "The predictor's Ultralytics response"), (status = 404, body = crate::api::error::ErrorBody),
        crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn predict(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Path((owner, deployment)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    principal.require(Action::Read)?;
    let ns = own_workspace(&principal, &owner)?.to_string();
    let md = find(&api, &ns, &deployment)?;
    let Some(gateway) = api.gateway.clone() else {
        return Err(ApiError::NotImplemented { what: "predictions without the gateway".into() });
    };
    let (mut parts, body) = req.into_parts();
    let query = parts.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let uri = format!("/{ns}/{}/predict{query}", md.name_any());
    parts.uri = uri.parse().map_err(|_| ApiError::bad_request("path", "not a valid URI"))?;
    let forwarded = Request::from_parts(parts, Body::new(body));
    gateway.oneshot(forwarded).await.map_err(|e| match e {})
}

/// `GET /api/deployments/{owner}/{deployment}/health` response.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// Whether the predictor answered its health check with 200.
    pub healthy: bool,
    /// The HTTP status it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// How long the check took, through the gateway.
    pub latency_ms: f64,
    /// Why it is not healthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The deployment's health: its predictor's `/health`, through the gateway (which answers for
/// a deployment at zero from its status, and wakes it).
#[utoipa::path(get, path = "/api/deployments/{owner}/{deployment}/health", tag = "ultralytics",
    params(("owner" = String, Path), ("deployment" = String, Path)),
    responses((status = 200, body = Health), (status = 404, body = crate::api::error::ErrorBody), crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn health(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    headers: HeaderMap,
    Path((owner, deployment)): Path<(String, String)>,
) -> Result<Json<Health>, ApiError> {
    principal.require(Action::Read)?;
    let ns = own_workspace(&principal, &owner)?.to_string();
    let md = find(&api, &ns, &deployment)?;
    let Some(gateway) = api.gateway.clone() else {
        return Err(ApiError::NotImplemented { what: "health checks without the gateway".into() });
    };
    // The caller's own key goes with it: the gateway checks it again, then removes it.
    let mut req = axum::http::Request::builder().method("GET").uri(format!("/{ns}/{}/health", md.name_any()));
    if let Some(auth) = headers.get(axum::http::header::AUTHORIZATION) {
        req = req.header(axum::http::header::AUTHORIZATION, auth);
    }
    let req = req.body(Body::empty()).map_err(ApiError::internal)?;
    let t0 = std::time::Instant::now();
    let Ok(resp) = gateway.oneshot(req).await;
    let latency_ms = (t0.elapsed().as_secs_f64() * 1000.0 * 10.0).round() / 10.0;
    let status = resp.status();
    let error = if status.is_success() {
        None
    } else {
        let body = axum::body::to_bytes(resp.into_body(), 64 << 10).await.unwrap_or_default();
        Some(String::from_utf8_lossy(&body).chars().take(500).collect())
    };
    Ok(Json(Health { healthy: status == StatusCode::OK, status: Some(status.as_u16()), latency_ms, error }))
}

/// `GET .../logs` query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Comma-separated severities to keep: `DEBUG`, `INFO`, `WARNING`, `ERROR`, `CRITICAL`.
    pub severity: Option<String>,
    /// Entries per page, 1 to 200; default 50.
    pub limit: Option<usize>,
    /// `nextPageToken` of the previous page.
    pub page_token: Option<String>,
}

/// A log entry.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogEntry {
    /// When it was logged (RFC 3339).
    pub timestamp: String,
    /// `DEBUG`, `INFO`, `WARNING`, `ERROR`, or `DEFAULT` for a line that names no level.
    pub severity: String,
    /// `[<pod>] <line>`.
    pub message: String,
}

/// `GET .../logs` response.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Logs {
    /// Newest first.
    pub entries: Vec<LogEntry>,
    /// Pass as `pageToken` for the next, older page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// How far back deployment logs go.
const LOG_WINDOW_HOURS: i64 = 24;
/// Most lines read from the pods for one page.
const LOG_LINES_READ: usize = 10_000;

/// One page of the log (pure): `entries` filtered by `severity`, after the entry whose id is
/// `token`, at most `limit`.
pub fn logs_page(
    entries: Vec<crate::podlogs::LogEntry>,
    severity: Option<&str>,
    limit: usize,
    token: Option<&str>,
) -> Result<Logs, ApiError> {
    let wanted: Option<Vec<String>> = severity.map(|s| s.split(',').map(|x| x.trim().to_ascii_uppercase()).collect());
    if let Some(w) = &wanted
        && let Some(bad) = w.iter().find(|x| !["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"].contains(&x.as_str()))
    {
        return Err(ApiError::bad_request(
            "severity",
            format!("'{bad}' is not DEBUG, INFO, WARNING, ERROR or CRITICAL"),
        ));
    }
    let kept: Vec<_> =
        entries.into_iter().filter(|e| wanted.as_ref().is_none_or(|w| w.iter().any(|x| x == e.severity))).collect();
    let start = match token {
        None => 0,
        Some(t) => kept.iter().position(|e| e.id == t).map(|i| i + 1).ok_or_else(|| {
            ApiError::bad_request("pageToken", "not a token of this log (or its line has left the 24-hour window)")
        })?,
    };
    let page: Vec<_> = kept.iter().skip(start).take(limit).collect();
    let more = kept.len() > start + page.len();
    Ok(Logs {
        next_page_token: if more { page.last().map(|e| e.id.clone()) } else { None },
        entries: page
            .into_iter()
            .map(|e| LogEntry { timestamp: e.timestamp(), severity: e.severity.into(), message: e.message.clone() })
            .collect(),
    })
}

/// The predictor pods' log lines of the last 24 hours, newest first, a page at a time.
#[utoipa::path(get, path = "/api/deployments/{owner}/{deployment}/logs", tag = "ultralytics",
    params(("owner" = String, Path), ("deployment" = String, Path), LogsQuery),
    responses((status = 200, body = Logs), (status = 400, body = crate::api::error::ErrorBody),
        (status = 404, body = crate::api::error::ErrorBody), crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn logs(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Path((owner, deployment)): Path<(String, String)>,
    Query(q): Query<LogsQuery>,
) -> Result<Json<Logs>, ApiError> {
    principal.require(Action::Read)?;
    let ns = own_workspace(&principal, &owner)?.to_string();
    let md = find(&api, &ns, &deployment)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::bad_request("limit", format!("must be from 1 to 200, not {limit}")));
    }
    let now = chrono::Utc::now();
    let from = now - chrono::Duration::hours(LOG_WINDOW_HOURS);
    let pods = api.cluster.predictor_logs(&ns, &md.name_any(), Some(LOG_WINDOW_HOURS * 3600)).await?;
    let entries = crate::podlogs::entries(&pods, from, now, LOG_LINES_READ);
    Ok(Json(logs_page(entries, q.severity.as_deref(), limit, q.page_token.as_deref())?))
}

/// `GET /api/deployments` query: the reference's filters.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct OwnListQuery {
    /// The workspace (default: the key's).
    pub owner: Option<String>,
    /// Only deployments of this model (its 12-hex id).
    pub model_id: Option<String>,
    /// Only deployments with this status.
    pub status: Option<String>,
    /// Most items, 1 to 100; default 20.
    pub limit: Option<usize>,
}

/// The key's workspace's deployments (the reference's form).
#[utoipa::path(get, path = "/api/deployments", tag = "ultralytics", params(OwnListQuery),
    responses((status = 200, body = DeploymentList), (status = 400, body = crate::api::error::ErrorBody), crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn list_own(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    headers: HeaderMap,
    Query(q): Query<OwnListQuery>,
) -> Result<Json<DeploymentList>, ApiError> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request("limit", format!("must be from 1 to 100, not {limit}")));
    }
    let owner = q.owner.clone().unwrap_or_else(|| principal.namespace.clone());
    let model = match &q.model_id {
        Some(id) => {
            let record = model_record(&api, &principal.namespace, id)?;
            Some(super::models::slugs_of(&record))
        }
        None => None,
    };
    let Json(mut listed) = list(
        State(api.clone()),
        principal,
        headers,
        Path(owner.clone()),
        Query(ListQuery { status: q.status, limit: None }),
    )
    .await?;
    if let Some((project, slug)) = model {
        let of_model: std::collections::HashSet<String> = api
            .deployments_in(&owner)
            .iter()
            .filter(|m| m.labels().get(PROJECT) == Some(&project) && m.labels().get(MODEL) == Some(&slug))
            .map(|m| m.name_any())
            .collect();
        listed.deployments.retain(|d| of_model.contains(&d.deployment));
        listed.total = listed.deployments.len();
    }
    listed.deployments.truncate(limit);
    Ok(Json(listed))
}

/// The model record of a 12-hex model id in `ns`.
fn model_record(
    api: &UltralyticsApi,
    ns: &str,
    id: &str,
) -> Result<Arc<k8s_openapi::api::core::v1::ConfigMap>, ApiError> {
    (id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| api.record(ns, &super::models::record_name(id)))
        .flatten()
        .filter(|r| super::models::is_model(r))
        .ok_or_else(|| ApiError::NotFound(format!("model '{id}'")))
}

/// `POST /api/deployments` body (the reference's form).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateByModelId {
    /// The model's 12-hex id.
    pub model_id: String,
    /// The deployment's display name (its slug names the ModelDeployment).
    pub name: String,
    /// Accepted; Ocellus serves where it is installed.
    pub region: Option<String>,
    /// `cpu` (cores) and `memoryGi` of each pod; `minInstances`/`maxInstances` are accepted as
    /// the platform's plan caps them (0 and 1): one replica, as the other form.
    pub resources: Option<Value>,
}

/// Deploys a trained model by its id (the reference's form).
#[utoipa::path(post, path = "/api/deployments", tag = "ultralytics", request_body = CreateByModelId,
    responses((status = 201, body = Object), (status = 400, body = crate::api::error::ErrorBody),
        (status = 404, body = crate::api::error::ErrorBody), (status = 409, body = crate::api::error::ErrorBody),
        crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn create_by_model_id(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    ApiJson(body): ApiJson<CreateByModelId>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    principal.require(Action::Write)?;
    let record = model_record(&api, &principal.namespace, &body.model_id)?;
    let (project, model) = super::models::slugs_of(&record);
    let number = |k: &str| body.resources.as_ref().and_then(|r| r.get(k)).and_then(Value::as_f64);
    let ns = principal.namespace.clone();
    let create_body = CreateDeployment {
        project,
        model,
        deployment: None,
        name: Some(body.name),
        region: body.region,
        cpu: number("cpu"),
        memory_gi: number("memoryGi"),
    };
    create(State(api), principal, Path(ns), ApiJson(create_body)).await
}

/// `GET /api/deployments/{owner}`: the workspace's list, or, for a `dp_` id, that deployment.
pub async fn list_or_retrieve_by_id(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    headers: HeaderMap,
    Path(owner): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    if owner.starts_with("dp_") {
        let ns = principal.namespace.clone();
        let Json(one) = retrieve(State(api), principal, headers, Path((ns, owner))).await?;
        return Ok(Json(one).into_response());
    }
    let Json(list) = list(State(api), principal, headers, Path(owner), Query(q)).await?;
    Ok(Json(list).into_response())
}

/// `DELETE /api/deployments/{dp_id}`.
pub async fn delete_by_id(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Path(owner): Path<String>,
) -> Result<Json<Success>, ApiError> {
    if !owner.starts_with("dp_") {
        return Err(super::compat::answer("DELETE", &format!("/api/deployments/{owner}")));
    }
    let ns = principal.namespace.clone();
    delete(State(api), principal, Path((ns, owner))).await
}

/// `GET /api/deployments/{owner}/{deployment}`, and the id forms `GET
/// /api/deployments/{dp_id}/health|logs`.
pub async fn get_item(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    headers: HeaderMap,
    Path((owner, deployment)): Path<(String, String)>,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    if !owner.starts_with("dp_") {
        let Json(one) = retrieve(State(api), principal, headers, Path((owner, deployment))).await?;
        return Ok(Json(one).into_response());
    }
    let ns = principal.namespace.clone();
    match deployment.as_str() {
        "health" => Ok(health(State(api), principal, headers, Path((ns, owner))).await?.into_response()),
        "logs" => {
            let Query(q) =
                Query::<LogsQuery>::try_from_uri(&uri).map_err(|e| ApiError::bad_request("query", e.body_text()))?;
            Ok(logs(State(api), principal, Path((ns, owner)), Query(q)).await?.into_response())
        }
        _ => Err(super::compat::answer("GET", &format!("/api/deployments/{owner}/{deployment}"))),
    }
}

/// The id forms `POST /api/deployments/{dp_id}/start|stop|predict`.
pub async fn post_by_id(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Path((owner, deployment)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let path = format!("/api/deployments/{owner}/{deployment}");
    if !owner.starts_with("dp_") {
        return Err(super::compat::answer("POST", &path));
    }
    let ns = principal.namespace.clone();
    let action = |a: &str| UpdateDeployment {
        action: Some(a.into()),
        name: None,
        cpu: None,
        memory_gi: None,
        project: None,
        model: None,
    };
    match deployment.as_str() {
        "start" | "stop" => {
            Ok(update(State(api), principal, Path((ns, owner)), ApiJson(action(&deployment))).await?.into_response())
        }
        "predict" => predict(State(api), principal, Path((ns, owner)), req).await,
        _ => Err(super::compat::answer("POST", &path)),
    }
}

/// Annotation marking the ModelDeployment that serves a model's predictions through the API.
pub const PREDICTIONS_OF: &str = "ocellus.dev/predictions-of";

/// The ModelDeployment a model's predictions go to (pure, over `deployments` of its
/// namespace): one labelled with the model that is not failed, expired or stopped, preferring
/// one that serves now.
pub fn serving_deployment(
    deployments: &[Arc<ModelDeployment>],
    project: &str,
    model: &str,
) -> Option<Arc<ModelDeployment>> {
    let mut candidates: Vec<_> = deployments
        .iter()
        .filter(|m| m.labels().get(PROJECT).map(String::as_str) == Some(project))
        .filter(|m| m.labels().get(MODEL).map(String::as_str) == Some(model))
        .filter(|m| !m.spec.stopped && m.metadata.deletion_timestamp.is_none())
        .filter(|m| {
            !matches!(m.status.as_ref().map(|s| s.phase), Some(DeploymentPhase::Failed | DeploymentPhase::Expired))
        })
        .cloned()
        .collect();
    let serving = |m: &ModelDeployment| {
        matches!(m.status.as_ref().map(|s| s.phase), Some(DeploymentPhase::Ready | DeploymentPhase::ScaledToZero))
    };
    candidates.sort_by_key(|m| (!serving(m), m.name_any()));
    candidates.into_iter().next()
}

/// A prediction by model (the platform's shared inference): handed to a deployment of the
/// model, or, when it has none, to one Ocellus makes for it: `predict-<model id>`, scaling to
/// zero when idle (at most one replica), which the request wakes and waits for.
#[utoipa::path(post, path = "/api/models/{owner}/{project}/{model}/predict", tag = "ultralytics",
    params(("owner" = String, Path), ("project" = String, Path), ("model" = String, Path)),
    responses((status = 200, description = "The predictor's Ultralytics response"), (status = 404, body = crate::api::error::ErrorBody),
        (status = 409, body = crate::api::error::ErrorBody), crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn predict_by_model(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Path((owner, project, model)): Path<(String, String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    principal.require(Action::Read)?;
    let ns = own_workspace(&principal, &owner)?.to_string();
    super::models::find(&api, &ns, &project, &model)?;
    let md = match serving_deployment(&api.deployments_in(&ns), &project, &model) {
        Some(md) => md,
        None => {
            principal.require(Action::Write)?;
            let id = super::models::model_id(&project, &model);
            let name = format!("predict-{id}");
            let source = model_source(&api, &ns, &project, &model)?;
            let body = CreateDeployment {
                project: project.clone(),
                model: model.clone(),
                deployment: Some(name.clone()),
                name: Some(format!("{project}/{model} predictions")),
                region: None,
                cpu: None,
                memory_gi: None,
            };
            let mut md = build(&ns, &body, source)?;
            md.spec.scaling = ocellus_crds::Scaling { min_replicas: 0, max_replicas: 1, ..Default::default() };
            md.metadata.annotations.get_or_insert_with(Default::default).insert(PREDICTIONS_OF.into(), id);
            let created = match api.cluster.create_deployment(md).await {
                Ok(c) => c,
                // Another request (or replica) made it first: use that one (an empty merge patch
                // reads it back from the API server, which this replica's cache may lag).
                Err(ApiError::Conflict(_)) => api.cluster.patch_deployment(&ns, &name, json!({})).await?,
                Err(e) => return Err(e),
            };
            tracing::info!(namespace = %ns, deployment = %created.name_any(), key = %principal.key_id, "deployment for predictions by model created");
            let created = Arc::new(created);
            api.recent_deployments.wrote((*created).clone());
            created
        }
    };
    predict(State(api), principal, Path((ns, md.name_any())), req).await
}

/// `POST /api/deployments/{owner}` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateDeployment {
    /// The model's project.
    pub project: String,
    /// The model (trained: its `best` weights are served).
    pub model: String,
    /// The deployment's name: lowercase letters, digits and dashes, at most 63. Default: from
    /// `name`, else the model's slug.
    pub deployment: Option<String>,
    /// Display name.
    pub name: Option<String>,
    /// Accepted; Ocellus serves where it is installed.
    pub region: Option<String>,
    /// CPU cores per pod, 0.1 to 64; default 1.
    pub cpu: Option<f64>,
    /// Memory per pod in GiB, 0.5 to 512; default 2.
    pub memory_gi: Option<f64>,
}

fn check_cpu(cpu: f64) -> Result<String, ApiError> {
    if (0.1..=64.0).contains(&cpu) {
        Ok(format!("{}m", (cpu * 1000.0).round() as i64))
    } else {
        Err(ApiError::bad_request("cpu", format!("must be from 0.1 to 64 cores, not {cpu}")))
    }
}

fn check_memory(gi: f64) -> Result<String, ApiError> {
    if (0.5..=512.0).contains(&gi) {
        Ok(format!("{}Mi", (gi * 1024.0).round() as i64))
    } else {
        Err(ApiError::bad_request("memoryGi", format!("must be from 0.5 to 512 GiB, not {gi}")))
    }
}

/// The model source of a trained platform model: its newest completed ONNX export (served by
/// ONNX Runtime), else its TrainingJob's `best` weights (which the operator exports to
/// TorchScript).
fn model_source(api: &UltralyticsApi, ns: &str, project: &str, model: &str) -> Result<ModelSource, ApiError> {
    let record = super::models::find(api, ns, project, model)?;
    let tj = super::models::training_job_of(api, &record).ok_or_else(|| {
        ApiError::Conflict(format!("model '{project}/{model}' has not been trained: start its training first"))
    })?;
    let onnx = super::models::exports_of(api, &tj).into_iter().find(|e| {
        e.spec.format == ExportFormat::Onnx && e.status.as_ref().is_some_and(|s| s.phase == ExportPhase::Succeeded)
    });
    Ok(ModelSource {
        export: onnx.as_ref().map(|e| LocalRef { name: e.name_any() }),
        training_job: match &onnx {
            Some(_) => None,
            None => Some(TrainingJobCheckpointRef { name: tj.name_any(), checkpoint: CheckpointKind::Best }),
        },
        uri: None,
        format: None,
        sha256: None,
        class_names: vec![],
    })
}

/// The ModelDeployment a create request asks for (pure), serving `source`.
pub fn build(ns: &str, body: &CreateDeployment, source: ModelSource) -> Result<ModelDeployment, ApiError> {
    let slug = match (&body.deployment, &body.name) {
        (Some(d), _) => d.clone(),
        (None, Some(n)) => super::datasets::slugify(n),
        (None, None) => body.model.clone(),
    };
    if !crate::api::keys::is_namespace_name(&slug) {
        return Err(ApiError::bad_request(
            "deployment",
            format!("'{slug}' is not a valid name: 1 to 63 lowercase letters, digits and dashes"),
        ));
    }
    let mut resources = PredictorResources::default();
    if let Some(c) = body.cpu {
        resources.cpu = check_cpu(c)?;
    }
    if let Some(m) = body.memory_gi {
        resources.memory = check_memory(m)?;
    }
    let mut md = ModelDeployment::new(&slug, ModelDeploymentSpec { resources, ..ModelDeploymentSpec::serving(source) });
    md.metadata.namespace = Some(ns.into());
    md.metadata.labels = Some(
        [(MANAGED_BY.0, MANAGED_BY.1), (PROJECT, body.project.as_str()), (MODEL, body.model.as_str())]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    md.metadata.annotations =
        Some([(DISPLAY_NAME.to_string(), body.name.clone().unwrap_or_else(|| slug.clone()))].into_iter().collect());
    Ok(md)
}

/// Deploys a trained model.
#[utoipa::path(post, path = "/api/deployments/{owner}", tag = "ultralytics",
    params(("owner" = String, Path)), request_body = CreateDeployment,
    responses((status = 201, body = Object), (status = 400, body = crate::api::error::ErrorBody),
        (status = 404, body = crate::api::error::ErrorBody), (status = 409, body = crate::api::error::ErrorBody),
        crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn create(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Path(owner): Path<String>,
    ApiJson(body): ApiJson<CreateDeployment>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    principal.require(Action::Write)?;
    let ns = own_workspace(&principal, &owner)?.to_string();
    let source = model_source(&api, &ns, &body.project, &body.model)?;
    let md = build(&ns, &body, source)?;
    let created = api.cluster.create_deployment(md).await?;
    let item = deployment_item(&created, "");
    api.recent_deployments.wrote(created);
    tracing::info!(namespace = %ns, deployment = %item.deployment, key = %principal.key_id, "deployment created");
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": item.id, "deployment": item.deployment, "status": "creating",
            "message": "the model is exported and its predictor started", "region": REGION})),
    ))
}

/// `PATCH /api/deployments/{owner}/{deployment}` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateDeployment {
    /// `stop`, `start`, `resize` (with `cpu`, `memoryGi`) or `replace` (with `project`, `model`).
    pub action: Option<String>,
    /// A new display name.
    pub name: Option<String>,
    /// `resize`: CPU cores per pod.
    pub cpu: Option<f64>,
    /// `resize`: memory per pod in GiB.
    pub memory_gi: Option<f64>,
    /// `replace`: the new model's project.
    pub project: Option<String>,
    /// `replace`: the new model.
    pub model: Option<String>,
}

/// The merge patch an update asks for (pure), given the new model's source for `replace`.
pub fn update_patch(body: &UpdateDeployment, replacement: Option<ModelSource>) -> Result<Value, ApiError> {
    let mut patch = json!({});
    if let Some(n) = &body.name {
        patch["metadata"] = json!({"annotations": {DISPLAY_NAME: n}});
    }
    match body.action.as_deref() {
        None if body.name.is_some() => {}
        None => return Err(ApiError::bad_request("action", "give an action (stop, start, resize, replace) or a name")),
        Some("stop") => patch["spec"] = json!({"stopped": true}),
        Some("start") => patch["spec"] = json!({"stopped": false}),
        Some("resize") => {
            let mut r = json!({});
            if let Some(c) = body.cpu {
                r["cpu"] = json!(check_cpu(c)?);
            }
            if let Some(m) = body.memory_gi {
                r["memory"] = json!(check_memory(m)?);
            }
            if r.as_object().is_some_and(|o| o.is_empty()) {
                return Err(ApiError::bad_request("cpu", "resize needs cpu or memoryGi"));
            }
            patch["spec"] = json!({"resources": r});
        }
        Some("replace") => {
            let source =
                replacement.ok_or_else(|| ApiError::bad_request("model", "replace needs project and model"))?;
            // Name every source field: the merge patch replaces the model whole.
            patch["spec"] = json!({"model": {"export": null, "uri": null, "format": null, "sha256": null,
                "trainingJob": source.training_job}});
            if let (Some(p), Some(m)) = (&body.project, &body.model) {
                patch["metadata"]["labels"] = json!({PROJECT: p, MODEL: m});
            }
        }
        Some(a) => {
            return Err(ApiError::bad_request(
                "action",
                format!("'{a}' is not supported: stop, start, resize or replace"),
            ));
        }
    }
    Ok(patch)
}

/// Stops, starts, resizes, renames or re-points a deployment.
#[utoipa::path(patch, path = "/api/deployments/{owner}/{deployment}", tag = "ultralytics",
    params(("owner" = String, Path), ("deployment" = String, Path)), request_body = UpdateDeployment,
    responses((status = 200, body = Object), (status = 400, body = crate::api::error::ErrorBody),
        (status = 404, body = crate::api::error::ErrorBody), crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn update(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Path((owner, deployment)): Path<(String, String)>,
    ApiJson(body): ApiJson<UpdateDeployment>,
) -> Result<Json<Value>, ApiError> {
    principal.require(Action::Write)?;
    let ns = own_workspace(&principal, &owner)?.to_string();
    let md = find(&api, &ns, &deployment)?;
    let replacement = match (body.action.as_deref(), &body.project, &body.model) {
        (Some("replace"), Some(p), Some(m)) => Some(model_source(&api, &ns, p, m)?),
        _ => None,
    };
    let patch = update_patch(&body, replacement)?;
    let changed = api.cluster.patch_deployment(&ns, &md.name_any(), patch).await?;
    let item = deployment_item(&changed, "");
    api.recent_deployments.wrote(changed);
    let status = match body.action.as_deref() {
        Some("stop") => "stopping",
        Some("start" | "resize" | "replace") => "deploying",
        _ => item.status.as_str(),
    };
    tracing::info!(namespace = %ns, deployment = %item.deployment, action = ?body.action, key = %principal.key_id, "deployment updated");
    Ok(Json(json!({"success": true, "status": status, "message": "updated", "deployment": item.deployment})))
}

/// Deletes a deployment (its predictor pods go with it).
#[utoipa::path(delete, path = "/api/deployments/{owner}/{deployment}", tag = "ultralytics",
    params(("owner" = String, Path), ("deployment" = String, Path)),
    responses((status = 200, body = Success), (status = 404, body = crate::api::error::ErrorBody), crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn delete(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Path((owner, deployment)): Path<(String, String)>,
) -> Result<Json<Success>, ApiError> {
    principal.require(Action::Write)?;
    let ns = own_workspace(&principal, &owner)?.to_string();
    let md = find(&api, &ns, &deployment)?;
    let name = md.name_any();
    api.cluster.delete_deployment(&ns, &name).await?;
    api.recent_deployments.deleted(&ns, &name, md.metadata.uid.clone());
    tracing::info!(namespace = %ns, deployment = %name, key = %principal.key_id, "deployment deleted");
    Ok(Json(Success { success: true }))
}

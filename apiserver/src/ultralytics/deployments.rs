//! Deployments: every `ModelDeployment` of the workspace, read through the Ultralytics API, and
//! predictions through it.
//!
//! - `GET /api/deployments/{owner}` and `GET /api/deployments/{owner}/{deployment}`: the
//!   ModelDeployments of the key's namespace, however they were created (kubectl, GitOps);
//! - `POST /api/deployments/{owner}/{deployment}/predict`: handed in-process to the gateway as
//!   `/{owner}/{deployment}/predict`, so it is held while the deployment wakes from zero, like
//!   any gateway request. The key stays with the apiserver: the gateway removes it.
//!
//! Creating, updating and deleting deployments need the platform's models (projects), which are
//! planned; until then they are created as ModelDeployments.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use kube::ResourceExt;
use ocellus_crds::{DeploymentPhase, ModelDeployment};
use serde::{Deserialize, Serialize};
use tower::ServiceExt;

use super::{REGION, UltralyticsApi, own_workspace, rfc3339};
use crate::api::{Action, ApiError, Principal};

pub(super) fn routes() -> Router<UltralyticsApi> {
    Router::new()
        .route("/api/deployments/{owner}", get(list).fallback(super::compat::fallback))
        .route("/api/deployments/{owner}/{deployment}", get(retrieve).fallback(super::compat::fallback))
        .route("/api/deployments/{owner}/{deployment}/predict", post(predict).fallback(super::compat::fallback))
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
        name: name.clone(),
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
fn origin(headers: &HeaderMap) -> String {
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

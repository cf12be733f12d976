//! Label Studio's ML-backend API (`/api/ml`), as its reference and `label-studio-sdk`
//! (`client.ml`) call it, over the ModelDeployments of the API key's namespace: every
//! ModelDeployment is an ML backend, however it was made, whose `url` is its gateway address
//! (which Label Studio itself can use as the backend: the predictor speaks the ML-backend
//! protocol).
//!
//! - `GET /api/ml` (`?project=`): the deployments, as backends; the Label Studio project one is
//!   connected to is an annotation;
//! - `POST /api/ml`: connects a project to the deployment whose gateway address `url` is, or
//!   deploys the Export or TrainingJob `extra_params.model` names (a new ModelDeployment);
//! - `GET|PATCH|DELETE /api/ml/{id}`: read, change (title, description, project, interactive,
//!   timeout, extra params) or delete the ModelDeployment;
//! - `GET /api/ml/{id}/versions`: the served model version.
//!
//! Refused with 501: `interactive-annotating` and `predict` (they need the project's tasks,
//! which live in Label Studio; Label Studio calls the backend's `url` for them itself) and
//! `train` (planned: the training loop of issue #14). Errors are Django REST framework's
//! `{"detail": ...}`.

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use kube::ResourceExt;
use ocellus_crds::{DeploymentPhase, ModelDeployment, ModelDeploymentSpec};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::{Action, ApiError, ApiState, Flavor, Principal, Surface, SurfaceError, SurfaceJson};
use crate::ultralytics::UltralyticsApi;
use crate::ultralytics::datasets::{DISPLAY_NAME, MANAGED_BY};
use crate::ultralytics::deployments::origin;

/// Annotation: the Label Studio project the deployment is connected to.
pub const PROJECT: &str = "ocellus.dev/label-studio-project";
/// Annotation: the backend's description.
pub const DESCRIPTION: &str = "ocellus.dev/description";
/// Annotation: `true` when Label Studio uses it for interactive pre-annotation.
pub const INTERACTIVE: &str = "ocellus.dev/label-studio-interactive";
/// Annotation: Label Studio's timeout for it, in seconds.
pub const TIMEOUT: &str = "ocellus.dev/label-studio-timeout";
/// Annotation: the `extra_params` JSON Label Studio passes at setup.
pub const EXTRA_PARAMS: &str = "ocellus.dev/label-studio-extra-params";

/// The routes, behind `api`'s authentication and rate limits.
pub fn router(cluster: &UltralyticsApi, api: &ApiState) -> Router {
    let routes = Router::new()
        .route("/api/ml", get(list).post(create))
        .route("/api/ml/", get(list).post(create))
        .route("/api/ml/{id}", get(retrieve).patch(update).delete(delete))
        .route("/api/ml/{id}/versions", get(versions))
        .route("/api/ml/{id}/interactive-annotating", post(not_here))
        .route("/api/ml/{id}/predict", post(not_here))
        .route("/api/ml/{id}/train", post(train))
        .route("/api/ml/{id}/{*rest}", axum::routing::any(not_found))
        .with_state(cluster.clone());
    api.protect(routes, Flavor::LabelStudio)
}

/// Label Studio's API: errors in Django REST framework's shape.
pub struct LabelStudio;

impl Surface for LabelStudio {
    const FLAVOR: Flavor = Flavor::LabelStudio;
}

/// [`ApiError`] in Label Studio's shape.
pub type LsError = SurfaceError<LabelStudio>;

/// A JSON body whose rejections are Label Studio's errors.
pub type LsJson<T> = SurfaceJson<T, LabelStudio>;

/// An ML backend, as Label Studio's API shows one.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MlBackend {
    /// A stable number from the ModelDeployment's uid.
    pub id: i64,
    /// The gateway address of the ModelDeployment: Label Studio's backend URL.
    pub url: String,
    /// The Label Studio project it is connected to (0: none).
    pub project: i64,
    /// `CO` (serving, or at zero and woken by the next request), `DI` (starting, paused or
    /// expired), `ER` (failed).
    pub state: String,
    /// `Connected`, `Disconnected` or `Error`.
    pub readable_state: String,
    /// The served model's version (its SHA-256 prefix), once resolved.
    pub model_version: Option<String>,
    /// Display name (the name by default).
    pub title: String,
    /// Description.
    pub description: Option<String>,
    /// Why it failed, in state `ER`.
    pub error_message: Option<String>,
    /// Used for interactive pre-annotation.
    pub is_interactive: bool,
    /// Label Studio's timeout for it, in seconds.
    pub timeout: f64,
    /// Passed to the backend at setup.
    pub extra_params: Option<Value>,
    /// Always `NONE`: the gateway takes the workspace's API keys.
    pub auth_method: String,
    /// Always absent.
    pub basic_auth_user: Option<String>,
    /// Always false.
    pub basic_auth_pass_is_set: bool,
    /// Always true: the version comes from the backend.
    pub auto_update: bool,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// Last change known (RFC 3339): the last scale change, else creation.
    pub updated_at: String,
}

/// The backend id of a ModelDeployment (pure): 31 bits of its uid, so that it fits every
/// client's integer.
pub fn backend_id(md: &ModelDeployment) -> i64 {
    let uid = md.metadata.uid.as_deref().unwrap_or_default().replace('-', "");
    let n = i64::from_str_radix(uid.get(..8).unwrap_or("1"), 16).unwrap_or(1) & 0x7fff_ffff;
    n.max(1)
}

/// The backend view of a ModelDeployment, its gateway under `origin` (pure).
pub fn backend_of(md: &ModelDeployment, origin: &str) -> MlBackend {
    let ann = md.annotations();
    let st = md.status.clone().unwrap_or_default();
    let (state, readable) = match st.phase {
        DeploymentPhase::Ready | DeploymentPhase::ScaledToZero => ("CO", "Connected"),
        DeploymentPhase::Failed => ("ER", "Error"),
        _ => ("DI", "Disconnected"),
    };
    let created = md.metadata.creation_timestamp.as_ref().map(crate::ultralytics::rfc3339).unwrap_or_default();
    MlBackend {
        id: backend_id(md),
        url: format!("{origin}/{}/{}", md.namespace().unwrap_or_default(), md.name_any()),
        project: ann.get(PROJECT).and_then(|p| p.parse().ok()).unwrap_or(0),
        state: state.into(),
        readable_state: readable.into(),
        model_version: st.model_version.clone(),
        title: ann.get(DISPLAY_NAME).cloned().unwrap_or_else(|| md.name_any()),
        description: ann.get(DESCRIPTION).cloned(),
        error_message: (state == "ER")
            .then(|| st.common.conditions.iter().find(|c| c.type_ == "Ready").and_then(|c| c.message.clone()))
            .flatten(),
        is_interactive: ann.get(INTERACTIVE).is_some_and(|v| v == "true"),
        timeout: ann.get(TIMEOUT).and_then(|t| t.parse().ok()).unwrap_or(100.0),
        extra_params: ann.get(EXTRA_PARAMS).and_then(|e| serde_json::from_str(e).ok()),
        auth_method: "NONE".into(),
        basic_auth_user: None,
        basic_auth_pass_is_set: false,
        auto_update: true,
        updated_at: st.last_scale_time.as_ref().map(crate::ultralytics::rfc3339).unwrap_or_else(|| created.clone()),
        created_at: created,
    }
}

fn find(api: &UltralyticsApi, ns: &str, id: &str) -> Result<Arc<ModelDeployment>, ApiError> {
    let id: i64 = id.parse().map_err(|_| ApiError::bad_request("id", format!("'{id}' is not an ML backend id")))?;
    api.deployments_in(ns)
        .into_iter()
        .find(|m| backend_id(m) == id)
        .ok_or_else(|| ApiError::NotFound(format!("ML backend {id}")))
}

/// List filters.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only the backends connected to this project.
    pub project: Option<i64>,
    /// Only interactive (or only non-interactive) backends.
    pub is_interactive: Option<bool>,
}

/// The namespace's ModelDeployments as ML backends.
#[utoipa::path(get, path = "/api/ml", tag = "label-studio", params(ListQuery),
    responses((status = 200, body = Vec<MlBackend>), (status = 401, body = Object)),
    security(("bearer" = [])))]
pub async fn list(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<MlBackend>>, LsError> {
    principal.require(Action::Read)?;
    let origin = origin(&headers);
    let mut out: Vec<MlBackend> = api
        .deployments_in(&principal.namespace)
        .iter()
        .map(|m| backend_of(m, &origin))
        .filter(|b| q.project.is_none_or(|p| b.project == p) && q.is_interactive.is_none_or(|i| b.is_interactive == i))
        .collect();
    out.sort_by_key(|b| b.id);
    Ok(Json(out))
}

/// `POST /api/ml` and `PATCH /api/ml/{id}` body (Label Studio's fields).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct BackendBody {
    /// The gateway address of a ModelDeployment of this workspace (`<origin>/<namespace>/<name>`).
    pub url: Option<String>,
    /// The Label Studio project to connect.
    pub project: Option<i64>,
    /// Display name.
    pub title: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Used for interactive pre-annotation.
    pub is_interactive: Option<bool>,
    /// Label Studio's timeout, in seconds (0 to 3600).
    pub timeout: Option<f64>,
    /// Passed to the backend at setup; with `model` (an Export or TrainingJob name) and no
    /// deployment at `url`, `POST` deploys that model.
    pub extra_params: Option<Value>,
    /// `NONE` only: the gateway takes the workspace's API keys, not a backend password.
    pub auth_method: Option<String>,
    /// Refused: see `auth_method`.
    pub basic_auth_user: Option<String>,
    /// Refused: see `auth_method`.
    pub basic_auth_pass: Option<String>,
    /// Accepted; versions always come from the backend.
    pub auto_update: Option<bool>,
}

/// The annotations a body sets (pure), checked.
pub fn annotations_of(body: &BackendBody) -> Result<BTreeMap<String, Value>, ApiError> {
    if body.auth_method.as_deref().is_some_and(|m| m != "NONE")
        || body.basic_auth_user.as_deref().is_some_and(|u| !u.is_empty())
        || body.basic_auth_pass.as_deref().is_some_and(|p| !p.is_empty())
    {
        return Err(ApiError::bad_request(
            "auth_method",
            "only NONE: Ocellus backends take the workspace's API key (as the gateway does), not basic auth",
        ));
    }
    let mut a = BTreeMap::new();
    if let Some(p) = body.project {
        if p < 0 {
            return Err(ApiError::bad_request("project", format!("must be a project id, not {p}")));
        }
        a.insert(PROJECT.to_string(), json!(p.to_string()));
    }
    if let Some(t) = &body.title {
        a.insert(DISPLAY_NAME.to_string(), json!(t));
    }
    if let Some(d) = &body.description {
        a.insert(DESCRIPTION.to_string(), json!(d));
    }
    if let Some(i) = body.is_interactive {
        a.insert(INTERACTIVE.to_string(), json!(i.to_string()));
    }
    if let Some(t) = body.timeout {
        if !(0.0..=3600.0).contains(&t) {
            return Err(ApiError::bad_request("timeout", format!("must be from 0 to 3600 seconds, not {t}")));
        }
        a.insert(TIMEOUT.to_string(), json!(t.to_string()));
    }
    if let Some(e) = &body.extra_params {
        a.insert(EXTRA_PARAMS.to_string(), json!(e.to_string()));
    }
    Ok(a)
}

/// The ModelDeployment name a backend `url` addresses in `ns`: its last two path segments are
/// `<ns>/<name>` (pure). The host may differ from the one the apiserver sees (Label Studio may
/// reach the gateway by an in-cluster name).
pub fn deployment_in_url(url: &str, ns: &str) -> Option<String> {
    let path = url.split_once("://").map(|(_, rest)| rest).unwrap_or(url);
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match segments.as_slice() {
        [.., n, name] if *n == ns && !name.is_empty() => Some(name.to_string()),
        _ => None,
    }
}

/// Connects a project to a deployment (or deploys a model as a new one).
#[utoipa::path(post, path = "/api/ml", tag = "label-studio", request_body = BackendBody,
    responses((status = 201, body = MlBackend), (status = 400, body = Object), (status = 404, body = Object),
        (status = 409, body = Object), (status = 401, body = Object)),
    security(("bearer" = [])))]
pub async fn create(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    headers: HeaderMap,
    SurfaceJson(body, _): LsJson<BackendBody>,
) -> Result<(StatusCode, Json<MlBackend>), LsError> {
    principal.require(Action::Write)?;
    let ns = principal.namespace.clone();
    let annotations = annotations_of(&body)?;
    let url = body.url.as_deref().unwrap_or_default();
    let existing =
        deployment_in_url(url, &ns).and_then(|name| api.deployments_in(&ns).into_iter().find(|m| m.name_any() == name));
    let md = match (existing, body.extra_params.as_ref().and_then(|e| e.get("model")).and_then(Value::as_str)) {
        (Some(md), _) => {
            let connected = md.annotations().get(PROJECT).cloned();
            let wanted = body.project.map(|p| p.to_string());
            if let (Some(c), Some(w)) = (&connected, &wanted)
                && c != w
                && c != "0"
            {
                return Err(ApiError::Conflict(format!(
                    "ModelDeployment '{}' is connected to project {c}: one project per deployment; add another \
                     deployment (extra_params.model) for project {w}",
                    md.name_any()
                ))
                .into());
            }
            api.cluster.patch_deployment(&ns, &md.name_any(), json!({"metadata": {"annotations": annotations}})).await?
        }
        (None, Some(model)) => {
            let source = crate::serving::model_source(&api, &ns, model)?;
            let name = crate::ultralytics::datasets::slugify(body.title.as_deref().unwrap_or(model));
            if !crate::api::keys::is_namespace_name(&name) {
                return Err(
                    ApiError::bad_request("title", format!("'{name}' is not a usable ModelDeployment name")).into()
                );
            }
            let mut md = ModelDeployment::new(&name, ModelDeploymentSpec::serving(source));
            md.metadata.namespace = Some(ns.clone());
            md.metadata.labels = Some(BTreeMap::from([(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())]));
            md.metadata.annotations = Some(
                annotations.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect(),
            );
            api.cluster.create_deployment(md).await?
        }
        (None, None) => {
            return Err(ApiError::bad_request(
                "url",
                format!(
                    "'{url}' is not the gateway address of a ModelDeployment of workspace '{ns}' \
                     (<gateway>/{ns}/<name>); to deploy a model, give extra_params.model (an Export or TrainingJob)"
                ),
            )
            .into());
        }
    };
    let out = backend_of(&md, &origin(&headers));
    api.recent_deployments.wrote(md);
    tracing::info!(namespace = %ns, backend = out.id, key = %principal.key_id, "label studio ML backend connected");
    Ok((StatusCode::CREATED, Json(out)))
}

/// One backend.
#[utoipa::path(get, path = "/api/ml/{id}", tag = "label-studio", params(("id" = i64, Path)),
    responses((status = 200, body = MlBackend), (status = 404, body = Object), (status = 401, body = Object)),
    security(("bearer" = [])))]
pub async fn retrieve(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<MlBackend>, LsError> {
    principal.require(Action::Read)?;
    let md = find(&api, &principal.namespace, &id)?;
    Ok(Json(backend_of(&md, &origin(&headers))))
}

/// Changes a backend's title, description, project, interactivity, timeout or extra params.
#[utoipa::path(patch, path = "/api/ml/{id}", tag = "label-studio", params(("id" = i64, Path)), request_body = BackendBody,
    responses((status = 200, body = MlBackend), (status = 400, body = Object), (status = 404, body = Object),
        (status = 401, body = Object)),
    security(("bearer" = [])))]
pub async fn update(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    headers: HeaderMap,
    Path(id): Path<String>,
    SurfaceJson(body, _): LsJson<BackendBody>,
) -> Result<Json<MlBackend>, LsError> {
    principal.require(Action::Write)?;
    let ns = principal.namespace.clone();
    let md = find(&api, &ns, &id)?;
    if let Some(url) = &body.url
        && deployment_in_url(url, &ns).as_deref() != Some(md.name_any().as_str())
    {
        return Err(ApiError::bad_request(
            "url",
            "is the gateway address of the backend's ModelDeployment and cannot change; add another backend",
        )
        .into());
    }
    let annotations = annotations_of(&body)?;
    let changed =
        api.cluster.patch_deployment(&ns, &md.name_any(), json!({"metadata": {"annotations": annotations}})).await?;
    let out = backend_of(&changed, &origin(&headers));
    api.recent_deployments.wrote(changed);
    Ok(Json(out))
}

/// Deletes the backend's ModelDeployment (its pods go with it).
#[utoipa::path(delete, path = "/api/ml/{id}", tag = "label-studio", params(("id" = i64, Path)),
    responses((status = 204), (status = 404, body = Object), (status = 401, body = Object)),
    security(("bearer" = [])))]
pub async fn delete(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, LsError> {
    principal.require(Action::Write)?;
    let ns = principal.namespace.clone();
    let md = find(&api, &ns, &id)?;
    let name = md.name_any();
    api.cluster.delete_deployment(&ns, &name).await?;
    api.recent_deployments.deleted(&ns, &name, md.metadata.uid.clone());
    tracing::info!(namespace = %ns, deployment = %name, key = %principal.key_id, "label studio ML backend deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/ml/{id}/versions` response.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Versions {
    /// The served model version, once resolved.
    pub versions: Vec<String>,
    /// Empty, or why there is no version yet.
    pub message: String,
}

/// The served model's version.
#[utoipa::path(get, path = "/api/ml/{id}/versions", tag = "label-studio", params(("id" = i64, Path)),
    responses((status = 200, body = Versions), (status = 404, body = Object), (status = 401, body = Object)),
    security(("bearer" = [])))]
pub async fn versions(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Versions>, LsError> {
    principal.require(Action::Read)?;
    let md = find(&api, &principal.namespace, &id)?;
    let version = md.status.as_ref().and_then(|s| s.model_version.clone());
    let message = if version.is_some() { "" } else { "the model is not resolved yet (the deployment is starting)" };
    Ok(Json(Versions { versions: version.into_iter().collect(), message: message.into() }))
}

/// Interactive annotation and predictions for all tasks need the tasks, which live in Label
/// Studio: it calls the backend's `url` for them itself.
async fn not_here(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Path(id): Path<String>,
    req: Request,
) -> LsError {
    if let Err(e) = find(&api, &principal.namespace, &id) {
        return e.into();
    }
    LsError::from(ApiError::NotImplemented {
        what: format!(
            "{} (the project's tasks live in Label Studio, which sends them to the backend's url itself)",
            req.uri().path()
        ),
    })
}

/// Training from Label Studio's annotations: planned.
#[utoipa::path(post, path = "/api/ml/{id}/train", tag = "label-studio", params(("id" = i64, Path)),
    responses((status = 501, body = Object), (status = 404, body = Object), (status = 401, body = Object)),
    security(("bearer" = [])))]
pub async fn train(State(api): State<UltralyticsApi>, principal: Principal, Path(id): Path<String>) -> LsError {
    if let Err(e) = find(&api, &principal.namespace, &id) {
        return e.into();
    }
    LsError::from(ApiError::NotImplemented {
        what: "training from Label Studio's annotations (planned: export, new Dataset version, TrainingJob, rollout)"
            .into(),
    })
}

/// Any other path under a backend.
async fn not_found(_principal: Principal, req: Request) -> LsError {
    LsError::from(ApiError::NotFound(format!("route {} {}", req.method(), req.uri().path())))
}

//! Roboflow dedicated deployments (`/api/roboflow/...`), as Roboflow's reference and its
//! `roboflow deployment` CLI call them (base URL `DEDICATED_DEPLOYMENT_URL`), mapped onto
//! ModelDeployments of the API key's namespace.
//!
//! - `POST /add` → a ModelDeployment serving the Export or TrainingJob its `deployment_name`
//!   names (or `model`, an Ocellus extension, names); `machine_type` → the pods' resources
//!   ([`machines`]); `duration` → `spec.durationHours`; `delete_on_expiration` →
//!   `spec.deleteOnExpiration`; `min_replicas`/`max_replicas` → `spec.scaling`;
//! - `GET /list`, `GET /get`: every ModelDeployment of the namespace, however it was made;
//! - `POST /pause`, `/resume` → `spec.stopped`; `POST /delete` deletes it;
//! - `GET /get_log`: the predictor pods' logs ([`crate::podlogs`]); `GET /machine_types`: [`machines`].
//!
//! The key comes as `api_key` in the query (GETs) or the JSON body (POSTs); `Authorization:
//! Bearer` works too. Errors are plain text with the status code, as the reference says.
//! A deployment's `url` (and `domain`, without the scheme) is its gateway address: Roboflow's
//! inference SDK pointed there reaches the predictor, which speaks the inference server's
//! protocol (`/model/registry`, `/infer/...`).

pub mod machines;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::{Next, from_fn};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use kube::ResourceExt;
use ocellus_crds::{DeploymentPhase, ModelDeployment, ModelDeploymentSpec, ModelSource, Scaling};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api::{Action, ApiError, ApiState, Flavor, Principal, Surface, SurfaceError, SurfaceJson};
use crate::ultralytics::UltralyticsApi;
use crate::ultralytics::datasets::MANAGED_BY;
use crate::ultralytics::deployments::origin;
use machines::MachineType;

/// Where the routes live: `DEDICATED_DEPLOYMENT_URL` is `<apiserver>/api/roboflow`.
pub const PREFIX: &str = "/api/roboflow";
/// Label marking the ModelDeployments `/add` made.
pub const API_LABEL: (&str, &str) = ("ocellus.dev/api", "roboflow");
/// Annotation: the machine type `/add` was given.
pub const MACHINE_TYPE: &str = "ocellus.dev/machine-type";
/// Annotation: the `creator_email` `/add` was given.
pub const CREATOR_EMAIL: &str = "ocellus.dev/creator-email";
/// Annotation: the public id of the API key that made it.
pub const CREATOR_KEY: &str = "ocellus.dev/creator-key";
/// Largest JSON body read for its `api_key` (the bodies are a few hundred bytes).
const BODY_LIMIT: usize = 64 << 10;

/// The routes, behind `api`'s authentication and rate limits, over the cluster caches of the
/// Ultralytics routes.
pub fn router(cluster: &UltralyticsApi, api: &ApiState) -> Router {
    let routes = Router::new()
        .route(&format!("{PREFIX}/add"), post(add))
        .route(&format!("{PREFIX}/list"), get(list))
        .route(&format!("{PREFIX}/get"), get(retrieve))
        .route(&format!("{PREFIX}/get_log"), get(get_log))
        .route(&format!("{PREFIX}/pause"), post(pause))
        .route(&format!("{PREFIX}/resume"), post(resume))
        .route(&format!("{PREFIX}/delete"), post(delete))
        .route(&format!("{PREFIX}/machine_types"), get(machine_types))
        .route(&format!("{PREFIX}/usage_workspace"), get(usage))
        .route(&format!("{PREFIX}/usage_deployment"), get(usage))
        .route(&format!("{PREFIX}/{{*rest}}"), axum::routing::any(not_found))
        .with_state(cluster.clone());
    api.protect(routes, Flavor::Roboflow).route_layer(from_fn(key_from_body))
}

/// Moves the `api_key` of a JSON POST body into `Authorization: Bearer` for the authentication
/// layer, when the request presents no key otherwise (a header or `api_key` query decides, as
/// everywhere). The body is passed on unchanged.
async fn key_from_body(req: Request, next: Next) -> Response {
    if req.method() != Method::POST || crate::api::auth::presents_key(req.headers(), req.uri()) {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let Ok(bytes) = to_bytes(body, BODY_LIMIT).await else {
        return ApiError::PayloadTooLarge { limit: BODY_LIMIT as u64 }.into_response_as(Flavor::Roboflow);
    };
    #[derive(Deserialize)]
    struct WithKey {
        api_key: Option<String>,
    }
    if let Ok(WithKey { api_key: Some(k) }) = serde_json::from_slice::<WithKey>(&bytes) {
        crate::api::auth::set_bearer(&mut parts.headers, &k);
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

/// Roboflow's dedicated-deployment API: plain-text errors.
pub struct Roboflow;

impl Surface for Roboflow {
    const FLAVOR: Flavor = Flavor::Roboflow;
}

/// A JSON body whose rejections are Roboflow's plain-text errors (see [`crate::api::ApiJson`]).
pub type RoboflowJson<T> = SurfaceJson<T, Roboflow>;

/// Roboflow's answers: JSON on success, plain-text errors.
type Reply<T> = Result<Json<T>, RoboflowError>;

/// [`ApiError`] in Roboflow's shape.
pub type RoboflowError = SurfaceError<Roboflow>;

/// A deployment as Roboflow's `/add`, `/get` and `/list` answer it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RoboflowDeployment {
    /// The ModelDeployment's uid (no dashes).
    pub deployment_id: String,
    /// The ModelDeployment's name.
    pub deployment_name: String,
    /// `cpu`, `gpu` or `gpu-<product>` (see `/machine_types`).
    pub machine_type: String,
    /// The `creator_email` given to `/add`, if any.
    pub creator_email: Option<String>,
    /// Public id of the API key that made it (not the key).
    pub creator_id: Option<String>,
    /// The deployment's name.
    pub subdomain: String,
    /// The gateway address without its scheme: `<host>/<namespace>/<name>`.
    pub domain: String,
    /// The gateway address, `<origin>/<namespace>/<name>`: the `api_url` of Roboflow's
    /// inference SDK (Ocellus extension).
    pub url: String,
    /// Lifetime in hours (`spec.durationHours`); absent: no expiry.
    pub duration: Option<f64>,
    /// Whether it is deleted, not just stopped, when the duration has passed.
    pub delete_on_expiration: bool,
    /// When it expires (RFC 3339), once the operator has computed it.
    pub expires_at: Option<String>,
    /// The Ocellus version serving it.
    pub inference_version: String,
    /// Fewest replicas.
    pub min_replicas: i32,
    /// Most replicas.
    pub max_replicas: i32,
    /// Replicas ready to serve now.
    pub num_replicas: i32,
    /// `pending`, `ready`, `pausing`, `paused`, `expired` or `failed`.
    pub status: String,
    /// The Ready condition's message, when not ready.
    pub status_message: Option<String>,
    /// The namespace.
    pub workspace_id: String,
    /// The namespace.
    pub workspace_url: String,
    /// The served model's Roboflow model id, `<deployment>/<version>` (`model_id` of the
    /// inference SDK), once the operator has resolved the version (Ocellus extension).
    pub model_id: Option<String>,
    /// What it serves: `export/<name>`, `trainingJob/<name>` or the artifact URI.
    pub model: String,
    /// Creation time (RFC 3339).
    pub created_at: String,
}

/// Roboflow's status of a ModelDeployment (pure): what the spec asks for, compared with the
/// phase the operator reports.
pub fn status_of(md: &ModelDeployment) -> &'static str {
    let phase = md.status.as_ref().map(|s| s.phase);
    match (md.spec.stopped, phase) {
        (_, Some(DeploymentPhase::Expired)) => "expired",
        (_, Some(DeploymentPhase::Failed)) => "failed",
        (true, Some(DeploymentPhase::Stopped)) => "paused",
        (true, _) => "pausing",
        (false, Some(DeploymentPhase::Ready | DeploymentPhase::ScaledToZero)) => "ready",
        (false, _) => "pending",
    }
}

/// The Roboflow view of a ModelDeployment, its gateway under `origin` (pure).
pub fn deployment_of(md: &ModelDeployment, origin: &str) -> RoboflowDeployment {
    let ns = md.namespace().unwrap_or_default();
    let name = md.name_any();
    let st = md.status.clone().unwrap_or_default();
    let url = format!("{origin}/{ns}/{name}");
    let domain = url.split_once("://").map(|(_, rest)| rest.to_string()).unwrap_or_else(|| url.clone());
    let m = &md.spec.model;
    let model = match (&m.export, &m.training_job, &m.uri) {
        (Some(e), _, _) => format!("export/{}", e.name),
        (_, Some(t), _) => format!("trainingJob/{}", t.name),
        (_, _, Some(u)) => u.clone(),
        _ => String::new(),
    };
    let ready = st.common.conditions.iter().find(|c| c.type_ == "Ready");
    RoboflowDeployment {
        deployment_id: md.metadata.uid.as_deref().unwrap_or_default().replace('-', ""),
        deployment_name: name.clone(),
        machine_type: md.annotations().get(MACHINE_TYPE).cloned().unwrap_or_else(|| machines::of(&md.spec.resources)),
        creator_email: md.annotations().get(CREATOR_EMAIL).cloned(),
        creator_id: md.annotations().get(CREATOR_KEY).cloned(),
        subdomain: name.clone(),
        domain,
        url,
        duration: md.spec.duration_hours,
        delete_on_expiration: md.spec.delete_on_expiration,
        expires_at: st.expires_at.as_ref().map(crate::ultralytics::rfc3339),
        inference_version: env!("CARGO_PKG_VERSION").into(),
        min_replicas: md.spec.scaling.min_replicas,
        max_replicas: md.spec.scaling.max_replicas,
        num_replicas: st.ready_replicas,
        status: status_of(md).into(),
        status_message: ready.filter(|c| !c.is_true()).and_then(|c| c.message.clone()),
        workspace_id: ns.clone(),
        workspace_url: ns,
        model_id: st.model_version.as_ref().map(|v| format!("{name}/{v}")),
        model,
        created_at: md.metadata.creation_timestamp.as_ref().map(crate::ultralytics::rfc3339).unwrap_or_default(),
    }
}

/// `POST /add` body (the reference's fields, plus `model`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct AddDeployment {
    /// The ModelDeployment's name: 1 to 63 lowercase letters, digits and dashes, starting with a
    /// letter. Also the model served, unless `model` is given.
    pub deployment_name: String,
    /// A machine type from `/machine_types` (or Roboflow's `dev-cpu`, `dev-gpu`, ...).
    pub machine_type: Option<String>,
    /// Recorded on the deployment.
    pub creator_email: Option<String>,
    /// Lifetime in hours, 0.0166 (one minute) to 8760; default 3.
    pub duration: Option<f64>,
    /// Delete it (not just stop it) when the duration has passed; default false.
    pub delete_on_expiration: Option<bool>,
    /// Accepted; the apiserver's Ocellus version serves it.
    pub inference_version: Option<String>,
    /// Fewest replicas, 0 (scale to zero) to 1000; default 1.
    pub min_replicas: Option<i32>,
    /// Most replicas, `min_replicas` to 1000; default 1 (or `min_replicas` when larger).
    pub max_replicas: Option<i32>,
    /// The Export or TrainingJob (its newest completed ONNX export, else its `best` weights) to
    /// serve; default: the one named `deployment_name` (Ocellus extension).
    pub model: Option<String>,
}

/// The checked name, duration and replica bounds of an `/add` (pure).
fn check(body: &AddDeployment) -> Result<(f64, i32, i32), ApiError> {
    let name = &body.deployment_name;
    if !crate::api::keys::is_namespace_name(name) || !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(ApiError::bad_request(
            "deployment_name",
            format!(
                "'{name}' is not a valid name: 1 to 63 lowercase letters, digits and dashes, starting with a letter"
            ),
        ));
    }
    let duration = body.duration.unwrap_or(3.0);
    if !(0.0166..=8760.0).contains(&duration) {
        return Err(ApiError::bad_request(
            "duration",
            format!("must be from 0.0166 (one minute) to 8760 hours, not {duration}"),
        ));
    }
    let min = body.min_replicas.unwrap_or(1);
    let max = body.max_replicas.unwrap_or(min.max(1));
    if !(0..=1000).contains(&min) || !(1..=1000).contains(&max) || min > max {
        return Err(ApiError::bad_request(
            "min_replicas",
            format!("need 0 <= min_replicas <= max_replicas <= 1000 and max_replicas >= 1, not {min} and {max}"),
        ));
    }
    Ok((duration, min, max))
}

/// The ModelDeployment an `/add` asks for (pure): `source` served on `machine`.
pub fn build(
    ns: &str,
    body: &AddDeployment,
    machine: &MachineType,
    source: ModelSource,
    principal: &Principal,
) -> Result<ModelDeployment, ApiError> {
    let (duration, min, max) = check(body)?;
    let name = &body.deployment_name;
    let mut md = ModelDeployment::new(
        name,
        ModelDeploymentSpec {
            resources: machine.resources(),
            scaling: Scaling { min_replicas: min, max_replicas: max, ..Default::default() },
            duration_hours: Some(duration),
            delete_on_expiration: body.delete_on_expiration.unwrap_or(false),
            ..ModelDeploymentSpec::serving(source)
        },
    );
    md.metadata.namespace = Some(ns.into());
    md.metadata.labels = Some(
        [(MANAGED_BY.0, MANAGED_BY.1), API_LABEL].into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    );
    let mut annotations = std::collections::BTreeMap::from([(MACHINE_TYPE.to_string(), machine.machine_type.clone())]);
    annotations.insert(CREATOR_KEY.into(), principal.key_id.to_string());
    if let Some(e) = &body.creator_email {
        annotations.insert(CREATOR_EMAIL.into(), e.clone());
    }
    md.metadata.annotations = Some(annotations);
    Ok(md)
}

/// Creates a deployment.
#[utoipa::path(post, path = "/api/roboflow/add", tag = "roboflow", request_body = AddDeployment,
    responses((status = 200, body = RoboflowDeployment), (status = 400, body = String), (status = 404, body = String),
        (status = 409, body = String), (status = 401, body = String)),
    security(("api_key" = [])))]
pub async fn add(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    headers: HeaderMap,
    SurfaceJson(body, _): RoboflowJson<AddDeployment>,
) -> Reply<RoboflowDeployment> {
    principal.require(Action::Write)?;
    check(&body)?;
    let ns = principal.namespace.clone();
    let types = machines::machine_types(api.nodes.state().iter().map(Arc::as_ref));
    let wanted = body
        .machine_type
        .as_deref()
        .ok_or_else(|| ApiError::bad_request("machine_type", format!("is required: one of {}", names(&types))))?;
    let machine = machines::find(&types, wanted).ok_or_else(|| {
        ApiError::bad_request("machine_type", format!("'{wanted}' is not offered here: one of {}", names(&types)))
    })?;
    let source = crate::serving::model_source(&api, &ns, body.model.as_deref().unwrap_or(&body.deployment_name))?;
    let md = build(&ns, &body, machine, source, &principal)?;
    let created = api.cluster.create_deployment(md).await?;
    let out = deployment_of(&created, &origin(&headers));
    api.recent_deployments.wrote(created);
    tracing::info!(namespace = %ns, deployment = %out.deployment_name, key = %principal.key_id, "roboflow deployment added");
    Ok(Json(out))
}

fn names(types: &[MachineType]) -> String {
    types.iter().map(|t| t.machine_type.as_str()).collect::<Vec<_>>().join(", ")
}

/// `/list` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `true` also lists expired deployments.
    pub show_expired: Option<String>,
    /// Accepted: deleted deployments are gone from the cluster and never listed.
    pub show_deleted: Option<String>,
}

/// The namespace's deployments, by name.
#[utoipa::path(get, path = "/api/roboflow/list", tag = "roboflow", params(ListQuery),
    responses((status = 200, body = Vec<RoboflowDeployment>), (status = 401, body = String)),
    security(("api_key" = [])))]
pub async fn list(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Reply<Vec<RoboflowDeployment>> {
    principal.require(Action::Read)?;
    let expired = q.show_expired.as_deref().is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let origin = origin(&headers);
    let mut out: Vec<RoboflowDeployment> = api
        .deployments_in(&principal.namespace)
        .iter()
        .map(|m| deployment_of(m, &origin))
        .filter(|d| expired || d.status != "expired")
        .collect();
    out.sort_by(|a, b| a.deployment_name.cmp(&b.deployment_name));
    Ok(Json(out))
}

/// Query naming one deployment.
#[derive(Debug, Deserialize, utoipa::IntoParams, utoipa::ToSchema)]
#[into_params(parameter_in = Query)]
pub struct Named {
    /// The deployment.
    pub deployment_name: String,
}

fn find(api: &UltralyticsApi, ns: &str, name: &str) -> Result<Arc<ModelDeployment>, ApiError> {
    api.deployments_in(ns)
        .into_iter()
        .find(|m| m.metadata.name.as_deref() == Some(name))
        .ok_or_else(|| ApiError::NotFound(format!("deployment '{name}'")))
}

/// One deployment.
#[utoipa::path(get, path = "/api/roboflow/get", tag = "roboflow", params(Named),
    responses((status = 200, body = RoboflowDeployment), (status = 404, body = String), (status = 401, body = String)),
    security(("api_key" = [])))]
pub async fn retrieve(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    headers: HeaderMap,
    Query(q): Query<Named>,
) -> Reply<RoboflowDeployment> {
    principal.require(Action::Read)?;
    let md = find(&api, &principal.namespace, &q.deployment_name)?;
    Ok(Json(deployment_of(&md, &origin(&headers))))
}

async fn set_stopped(
    api: &UltralyticsApi,
    principal: &Principal,
    headers: &HeaderMap,
    name: &str,
    stopped: bool,
) -> Reply<RoboflowDeployment> {
    principal.require(Action::Write)?;
    let ns = &principal.namespace;
    let md = find(api, ns, name)?;
    if !stopped && md.status.as_ref().is_some_and(|s| s.phase == DeploymentPhase::Expired) {
        return Err(ApiError::Conflict(format!(
            "deployment '{name}' has expired: delete it and add it again for a new duration"
        ))
        .into());
    }
    let changed = api.cluster.patch_deployment(ns, name, json!({"spec": {"stopped": stopped}})).await?;
    let out = deployment_of(&changed, &origin(headers));
    api.recent_deployments.wrote(changed);
    tracing::info!(namespace = %ns, deployment = %name, stopped, key = %principal.key_id, "roboflow deployment paused or resumed");
    Ok(Json(out))
}

/// Pauses a deployment: zero replicas until resumed (`spec.stopped: true`).
#[utoipa::path(post, path = "/api/roboflow/pause", tag = "roboflow", request_body = Named,
    responses((status = 200, body = RoboflowDeployment), (status = 404, body = String), (status = 401, body = String)),
    security(("api_key" = [])))]
pub async fn pause(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    headers: HeaderMap,
    SurfaceJson(q, _): RoboflowJson<Named>,
) -> Reply<RoboflowDeployment> {
    set_stopped(&api, &principal, &headers, &q.deployment_name, true).await
}

/// Resumes a paused deployment (`spec.stopped: false`); an expired one is refused (409).
#[utoipa::path(post, path = "/api/roboflow/resume", tag = "roboflow", request_body = Named,
    responses((status = 200, body = RoboflowDeployment), (status = 404, body = String), (status = 409, body = String),
        (status = 401, body = String)),
    security(("api_key" = [])))]
pub async fn resume(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    headers: HeaderMap,
    SurfaceJson(q, _): RoboflowJson<Named>,
) -> Reply<RoboflowDeployment> {
    set_stopped(&api, &principal, &headers, &q.deployment_name, false).await
}

/// Deletes a deployment (its predictor pods go with it).
#[utoipa::path(post, path = "/api/roboflow/delete", tag = "roboflow", request_body = Named,
    responses((status = 200, body = Object), (status = 404, body = String), (status = 401, body = String)),
    security(("api_key" = [])))]
pub async fn delete(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    SurfaceJson(q, _): RoboflowJson<Named>,
) -> Result<Json<serde_json::Value>, RoboflowError> {
    principal.require(Action::Write)?;
    let ns = &principal.namespace;
    let md = find(&api, ns, &q.deployment_name)?;
    api.cluster.delete_deployment(ns, &q.deployment_name).await?;
    api.recent_deployments.deleted(ns, &q.deployment_name, md.metadata.uid.clone());
    tracing::info!(namespace = %ns, deployment = %q.deployment_name, key = %principal.key_id, "roboflow deployment deleted");
    Ok(Json(json!({"deployment_name": q.deployment_name, "status": "deleted"})))
}

/// The machine types the cluster's nodes offer.
#[utoipa::path(get, path = "/api/roboflow/machine_types", tag = "roboflow",
    responses((status = 200, body = Vec<MachineType>), (status = 401, body = String)),
    security(("api_key" = [])))]
pub async fn machine_types(State(api): State<UltralyticsApi>, principal: Principal) -> Reply<Vec<MachineType>> {
    principal.require(Action::Read)?;
    Ok(Json(machines::machine_types(api.nodes.state().iter().map(Arc::as_ref))))
}

/// `/get_log` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// The deployment.
    pub deployment_name: String,
    /// Most entries, 1 to 1000; default 50.
    pub max_entries: Option<usize>,
    /// Start of the window (ISO 8601 with offset); default one hour before `to_timestamp`.
    pub from_timestamp: Option<String>,
    /// End of the window (ISO 8601 with offset); default now.
    pub to_timestamp: Option<String>,
}

fn parse_time(field: &str, v: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(v.trim()).map(|t| t.with_timezone(&Utc)).map_err(|_| {
        ApiError::bad_request(
            field,
            format!("'{v}' is not an ISO 8601 time with an offset (2025-01-22T13:23:14+00:00)"),
        )
    })
}

/// A log entry as `/get_log` answers it.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct LogEntry {
    /// Stable id of the line, by which the CLI drops repeats when it follows.
    pub insert_id: String,
    /// `[<pod>] <line>`.
    pub payload: String,
    /// `ERROR`, `WARNING`, `INFO` or `DEBUG` from the line's level; `DEFAULT` when it names none.
    pub severity: String,
    /// When it was logged (RFC 3339, microseconds, `+00:00`).
    pub timestamp: String,
}

/// The predictor pods' log lines in the window, newest first.
#[utoipa::path(get, path = "/api/roboflow/get_log", tag = "roboflow", params(LogQuery),
    responses((status = 200, body = Vec<LogEntry>), (status = 400, body = String), (status = 404, body = String),
        (status = 401, body = String)),
    security(("api_key" = [])))]
pub async fn get_log(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Query(q): Query<LogQuery>,
) -> Reply<Vec<LogEntry>> {
    principal.require(Action::Read)?;
    let ns = &principal.namespace;
    find(&api, ns, &q.deployment_name)?;
    let now = Utc::now();
    let to = q.to_timestamp.as_deref().map(|v| parse_time("to_timestamp", v)).transpose()?.unwrap_or(now);
    let from = q
        .from_timestamp
        .as_deref()
        .map(|v| parse_time("from_timestamp", v))
        .transpose()?
        .unwrap_or(to - chrono::Duration::hours(1));
    if from >= to {
        return Err(ApiError::bad_request("from_timestamp", "must be before to_timestamp").into());
    }
    let max = q.max_entries.unwrap_or(50);
    if !(1..=1000).contains(&max) {
        return Err(ApiError::bad_request("max_entries", format!("must be from 1 to 1000, not {max}")).into());
    }
    // Ask the API server for no more than the window (plus a second for rounding).
    let since = (now - from).num_seconds().max(0) + 1;
    let pods = api.cluster.predictor_logs(ns, &q.deployment_name, Some(since)).await?;
    let entries = crate::podlogs::entries(&pods, from, to, max);
    Ok(Json(
        entries
            .into_iter()
            .map(|e| LogEntry {
                timestamp: e.timestamp(),
                insert_id: e.id,
                payload: e.message,
                severity: e.severity.into(),
            })
            .collect(),
    ))
}

/// Usage reports are Roboflow billing: not offered.
async fn usage(_principal: Principal, req: Request) -> RoboflowError {
    RoboflowError::from(ApiError::NotImplemented {
        what: format!(
            "{}: usage reports (a hosted-platform billing feature; Ocellus exports request and replica metrics to Prometheus)",
            req.uri().path()
        ),
    })
}

/// Any other path under the prefix.
async fn not_found(_principal: Principal, req: Request) -> RoboflowError {
    RoboflowError::from(ApiError::NotFound(format!("route {} {}", req.method(), req.uri().path())))
}

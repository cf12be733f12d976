//! Projects: a platform project is a record, a ConfigMap named `ocellus-project-<slug>` in the
//! key's namespace, labelled `ocellus.dev/record=project`. Its models ([`super::models`]) are
//! records it owns, so deleting a project deletes its models, their TrainingJobs and Exports
//! (Kubernetes' garbage collector follows the owner references).
//!
//! - `POST /api/projects {project, name, description?, visibility?, owner?}`;
//! - `GET /api/projects/{owner}`: newest first, with each project's model count;
//! - `GET /api/projects/{owner}/{project}`: the project and its models;
//! - `DELETE /api/projects/{owner}/{project}`: `{success, cascadedModels}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use super::datasets::{DESCRIPTION, DISPLAY_NAME, MANAGED_BY, MAX_LIMIT, VISIBILITY, slugify};
use super::models::{ModelItem, model_summary};
use super::{REGION, UltralyticsApi, own_workspace, rfc3339};
use crate::api::{Action, ApiError, ApiJson, Principal};

/// Label naming what a record is: `project` or `model`.
pub const RECORD: &str = "ocellus.dev/record";
/// Label with the project's slug, on projects, models and their TrainingJobs and Exports.
pub const PROJECT: &str = "ocellus.dev/project";
/// Longest project or model slug: names built from it stay within Kubernetes' limits.
pub const MAX_SLUG: usize = 40;

pub(super) fn routes() -> Router<UltralyticsApi> {
    Router::new()
        .route("/api/projects", post(create).fallback(super::compat::fallback))
        .route("/api/projects/{owner}", get(list).fallback(super::compat::fallback))
        .route("/api/projects/{owner}/{project}", get(retrieve).delete(delete).fallback(super::compat::fallback))
}

/// The record name of project `slug`.
pub fn record_name(slug: &str) -> String {
    format!("ocellus-project-{slug}")
}

/// `slug` if it is a valid project or model slug (lowercase letters, digits and dashes, at
/// most [`MAX_SLUG`]), else a 400 naming `field`.
pub fn check_slug(field: &str, slug: &str) -> Result<(), ApiError> {
    if slug.len() <= MAX_SLUG && crate::api::keys::is_namespace_name(slug) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            field,
            format!(
                "'{slug}' is not a valid slug: 1 to {MAX_SLUG} lowercase letters, digits and dashes, starting and ending with a letter or digit"
            ),
        ))
    }
}

/// `private` (default) or `public`, else a 400.
pub fn check_visibility(v: Option<&str>) -> Result<String, ApiError> {
    match v.unwrap_or("private") {
        v @ ("private" | "public") => Ok(v.to_string()),
        _ => Err(ApiError::bad_request("visibility", "must be `private` or `public`")),
    }
}

/// A project as lists show it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectItem {
    /// `prj_` and the record's uid.
    pub id: String,
    /// The workspace (namespace).
    pub owner: String,
    /// The slug.
    pub project: String,
    /// Display name.
    pub name: String,
    /// Description, when one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `private` (default) or `public`; access is by namespace either way.
    pub visibility: String,
    /// Models in the project.
    pub model_count: usize,
    /// Their slugs.
    pub model_names: Vec<String>,
    /// Always 0.
    pub star_count: i64,
    /// Always `false`.
    pub is_starred: bool,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// The creation time: projects are not changed.
    pub updated_at: String,
}

/// `prj_` and the record's uid without dashes.
pub fn project_id(cm: &ConfigMap) -> String {
    format!("prj_{}", cm.metadata.uid.as_deref().unwrap_or_default().replace('-', ""))
}

/// The item of a project record and its models' slugs (pure).
pub fn project_item(cm: &ConfigMap, models: Vec<String>) -> ProjectItem {
    let ann = cm.annotations();
    let slug = cm.labels().get(PROJECT).cloned().unwrap_or_default();
    let created = cm.metadata.creation_timestamp.as_ref().map(rfc3339).unwrap_or_default();
    ProjectItem {
        id: project_id(cm),
        owner: cm.namespace().unwrap_or_default(),
        name: ann.get(DISPLAY_NAME).cloned().unwrap_or_else(|| slug.clone()),
        project: slug,
        description: ann.get(DESCRIPTION).cloned(),
        visibility: ann.get(VISIBILITY).cloned().unwrap_or_else(|| "private".into()),
        model_count: models.len(),
        model_names: models,
        star_count: 0,
        is_starred: false,
        updated_at: created.clone(),
        created_at: created,
    }
}

/// A project record of `ns` by slug.
pub fn find(api: &UltralyticsApi, ns: &str, slug: &str) -> Result<Arc<ConfigMap>, ApiError> {
    api.record(ns, &record_name(slug))
        .filter(|cm| cm.labels().get(RECORD).map(String::as_str) == Some("project"))
        .ok_or_else(|| ApiError::NotFound(format!("project '{slug}'")))
}

/// `POST /api/projects` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateProject {
    /// The slug: lowercase letters, digits and dashes, at most 40. Default: from `name`.
    pub project: Option<String>,
    /// Display name.
    pub name: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// `private` (default) or `public`.
    pub visibility: Option<String>,
    /// The workspace; must be the key's.
    pub owner: Option<String>,
}

/// `POST /api/projects` response.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedProject {
    /// `prj_` id.
    pub id: String,
    /// The workspace.
    pub owner: String,
    /// The slug.
    pub project: String,
    /// Always `us`.
    pub region: String,
}

/// The record a create request asks for (pure): validated.
pub fn build(ns: &str, body: &CreateProject) -> Result<ConfigMap, ApiError> {
    let slug = match (body.project.as_deref(), body.name.as_deref()) {
        (Some(s), _) => s.to_string(),
        (None, Some(n)) => {
            let mut s = slugify(n);
            s.truncate(MAX_SLUG);
            s.trim_end_matches('-').to_string()
        }
        (None, None) => return Err(ApiError::bad_request("project", "give a slug (`project`) or a `name`")),
    };
    check_slug("project", &slug)?;
    let mut ann = BTreeMap::from([
        (VISIBILITY.to_string(), check_visibility(body.visibility.as_deref())?),
        (DISPLAY_NAME.to_string(), body.name.clone().unwrap_or_else(|| slug.clone())),
    ]);
    if let Some(d) = &body.description {
        ann.insert(DESCRIPTION.into(), d.clone());
    }
    Ok(ConfigMap {
        metadata: ObjectMeta {
            name: Some(record_name(&slug)),
            namespace: Some(ns.into()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY.0.into(), MANAGED_BY.1.into()),
                (RECORD.into(), "project".into()),
                (PROJECT.into(), slug),
            ])),
            annotations: Some(ann),
            ..Default::default()
        },
        ..Default::default()
    })
}

/// Creates a project.
#[utoipa::path(post, path = "/api/projects", tag = "ultralytics", request_body = CreateProject,
    responses((status = 201, body = CreatedProject), (status = 400, body = crate::api::error::ErrorBody),
        (status = 409, body = crate::api::error::ErrorBody), crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn create(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    ApiJson(body): ApiJson<CreateProject>,
) -> Result<(StatusCode, Json<CreatedProject>), ApiError> {
    principal.require(Action::Write)?;
    if let Some(owner) = &body.owner {
        own_workspace(&principal, owner)?;
    }
    let record = build(&principal.namespace, &body)?;
    let slug = record.labels()[PROJECT].clone();
    let created = api.cluster.create_record(record).await.map_err(|e| match e {
        ApiError::Conflict(_) => ApiError::Conflict(format!("project '{slug}' already exists")),
        e => e,
    })?;
    let id = project_id(&created);
    api.recent_records.wrote(created);
    tracing::info!(namespace = %principal.namespace, project = %slug, key = %principal.key_id, "project created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedProject { id, owner: principal.namespace.clone(), project: slug, region: REGION.into() }),
    ))
}

/// List query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Most items to return (default and maximum 1000).
    pub limit: Option<usize>,
}

/// `GET /api/projects/{owner}` response.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProjectList {
    /// Newest first.
    pub projects: Vec<ProjectItem>,
    /// Projects in the workspace (before `limit`).
    pub total: usize,
    /// Always `us`.
    pub region: String,
}

/// The projects of a workspace.
#[utoipa::path(get, path = "/api/projects/{owner}", tag = "ultralytics",
    params(("owner" = String, Path, description = "Workspace (the key's namespace)"), ListQuery),
    responses((status = 200, body = ProjectList), (status = 404, body = crate::api::error::ErrorBody), crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn list(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Path(owner): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<ProjectList>, ApiError> {
    principal.require(Action::Read)?;
    let ns = own_workspace(&principal, &owner)?;
    if q.limit == Some(0) {
        return Err(ApiError::bad_request("limit", "must be at least 1"));
    }
    let records = api.records_in(ns);
    let mut projects: Vec<&Arc<ConfigMap>> =
        records.iter().filter(|cm| cm.labels().get(RECORD).map(String::as_str) == Some("project")).collect();
    projects.sort_by(|a, b| {
        let t = |c: &ConfigMap| c.metadata.creation_timestamp.as_ref().map(|t| t.0);
        t(b).cmp(&t(a)).then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    let total = projects.len();
    let limit = q.limit.unwrap_or(MAX_LIMIT).min(MAX_LIMIT);
    let projects = projects
        .into_iter()
        .take(limit)
        .map(|p| {
            let slug = p.labels().get(PROJECT).cloned().unwrap_or_default();
            project_item(p, super::models::model_slugs(&records, &slug))
        })
        .collect();
    Ok(Json(ProjectList { projects, total, region: REGION.into() }))
}

/// `GET /api/projects/{owner}/{project}` response.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetrievedProject {
    /// The project.
    pub project: ProjectItem,
    /// Its models, newest first.
    pub models: Vec<ModelItem>,
    /// Always `true`: a key reaches only its own workspace.
    pub is_owner: bool,
}

/// A project and its models.
#[utoipa::path(get, path = "/api/projects/{owner}/{project}", tag = "ultralytics",
    params(("owner" = String, Path), ("project" = String, Path, description = "Slug")),
    responses((status = 200, body = RetrievedProject), (status = 404, body = crate::api::error::ErrorBody), crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn retrieve(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Path((owner, project)): Path<(String, String)>,
) -> Result<Json<RetrievedProject>, ApiError> {
    principal.require(Action::Read)?;
    let ns = own_workspace(&principal, &owner)?;
    let p = find(&api, ns, &project)?;
    let records = api.records_in(ns);
    let models: Vec<ModelItem> =
        super::models::models_of(&records, &project).into_iter().map(|m| model_summary(&api, &m)).collect();
    let slugs = models.iter().map(|m| m.model.clone()).collect();
    Ok(Json(RetrievedProject { project: project_item(&p, slugs), models, is_owner: true }))
}

/// `DELETE /api/projects/{owner}/{project}` response.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeletedProject {
    /// Always `true`.
    pub success: bool,
    /// Models deleted with it.
    pub cascaded_models: usize,
}

/// Deletes a project, its models, and their training runs and exports (the weights stay in
/// the bucket).
#[utoipa::path(delete, path = "/api/projects/{owner}/{project}", tag = "ultralytics",
    params(("owner" = String, Path), ("project" = String, Path, description = "Slug")),
    responses((status = 200, body = DeletedProject), (status = 404, body = crate::api::error::ErrorBody), crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn delete(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Path((owner, project)): Path<(String, String)>,
) -> Result<Json<DeletedProject>, ApiError> {
    principal.require(Action::Write)?;
    let ns = own_workspace(&principal, &owner)?.to_string();
    let p = find(&api, &ns, &project)?;
    let models = super::models::models_of(&api.records_in(&ns), &project);
    let name = p.name_any();
    api.cluster.delete_record(&ns, &name).await?;
    api.recent_records.deleted(&ns, &name, p.metadata.uid.clone());
    // The garbage collector removes the models a moment later; reads must not see them meanwhile.
    for m in &models {
        api.recent_records.deleted(&ns, &m.name_any(), m.metadata.uid.clone());
    }
    tracing::info!(namespace = %ns, project = %project, models = models.len(), key = %principal.key_id, "project deleted");
    Ok(Json(DeletedProject { success: true, cascaded_models: models.len() }))
}

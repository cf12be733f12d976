//! Datasets: one `Dataset` per platform dataset, named by its slug, in the key's namespace.
//!
//! - `GET /api/datasets/{owner}` (SDK) and `GET /api/datasets` (reference): newest first;
//! - `POST /api/datasets`: a Dataset with no source yet (it waits for an upload);
//! - `GET|DELETE /api/datasets/{owner}/{dataset}`, and `GET|DELETE /api/datasets/{datasetId}`;
//! - `POST /api/datasets/{owner}/{dataset}/ingest` (SDK) and `POST /api/datasets/ingest`
//!   (reference, `datasetId` in the body): sets the Dataset's source to an upload session or a
//!   `sourceUrl`, which the operator then ingests. An ingest replaces the dataset's content.
//!
//! Items carry both key sets, the SDK's (`id`, `owner`, `dataset`) and the reference's (`_id`,
//! `username`, `slug`). Deleting a Dataset keeps its objects in the bucket, as the CRD says.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kube::ResourceExt;
use ocellus_crds::{Dataset, DatasetPhase, DatasetSource, DatasetSpec, HttpsSource, S3Source, Task, UploadSource};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{REGION, UltralyticsApi, own_workspace, rfc3339};
use crate::api::{Action, ApiError, ApiJson, Principal};

/// Label on everything the REST APIs create.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "ocellus-apiserver");
/// Annotation holding the display name.
pub const DISPLAY_NAME: &str = "ocellus.dev/display-name";
/// Annotation holding the description.
pub const DESCRIPTION: &str = "ocellus.dev/description";
/// Annotation holding the visibility (`private` or `public`; informational: access is by namespace).
pub const VISIBILITY: &str = "ocellus.dev/visibility";
/// Most datasets a list returns.
pub const MAX_LIMIT: usize = 1000;

pub(super) fn routes() -> Router<UltralyticsApi> {
    Router::new()
        .route("/api/datasets", get(list_own).post(create).fallback(super::compat::fallback))
        .route("/api/datasets/ingest", post(ingest_by_id).fallback(super::compat::fallback))
        .route(
            "/api/datasets/{owner}",
            get(list_or_retrieve_by_id).delete(delete_by_id).fallback(super::compat::fallback),
        )
        .route("/api/datasets/{owner}/{dataset}", get(get_item).delete(delete).fallback(super::compat::fallback))
        .route("/api/datasets/{owner}/{dataset}/ingest", post(ingest).fallback(super::compat::fallback))
        .route("/api/datasets/{owner}/{dataset}/export", get(export).fallback(super::compat::fallback))
        .route("/api/datasets/{owner}/{dataset}/class-stats", get(class_stats).fallback(super::compat::fallback))
}

/// A dataset as lists and `retrieve` show it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatasetItem {
    /// `ds_` and the Dataset's uid.
    pub id: String,
    /// The same id, as the reference names it.
    #[serde(rename = "_id")]
    pub underscore_id: String,
    /// The workspace (namespace).
    pub owner: String,
    /// The workspace, as the reference names it.
    pub username: String,
    /// The slug: the Dataset's name.
    pub dataset: String,
    /// The slug, as the reference names it.
    pub slug: String,
    /// Display name.
    pub name: String,
    /// Description, when one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `private` (default) or `public`; access is by namespace either way.
    pub visibility: String,
    /// The vision task.
    #[schema(value_type = String, example = "detect")]
    pub task: Task,
    /// `processing` while a source is being ingested, `ready`, or `failed`.
    pub status: String,
    /// Why the last ingest failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processing_error: Option<ProcessingError>,
    /// Valid images of the current manifest.
    pub image_count: i64,
    /// Classes.
    pub class_count: i64,
    /// Class names in index order.
    pub class_names: Vec<String>,
    /// Annotations.
    pub annotation_count: i64,
    /// Images per split, and `labeled` (all of them: unlabelled images are not ingested).
    pub splits: Splits,
    /// Frozen versions, oldest first.
    pub versions: Vec<VersionItem>,
    /// Always 0.
    pub star_count: i64,
    /// Always `false`.
    pub is_starred: bool,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// Last ingest's end, else the creation time.
    pub updated_at: String,
}

/// Why an ingest failed.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProcessingError {
    /// The ingest's message.
    pub message: String,
    /// When it failed (RFC 3339), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
}

/// Images per split.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Splits {
    /// Training images.
    pub train: i64,
    /// Validation images.
    pub val: i64,
    /// Test images.
    pub test: i64,
    /// Labelled images.
    pub labeled: i64,
}

/// A frozen version.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionItem {
    /// Its position, from 1.
    pub version: usize,
    /// Its name in the Dataset (`spec.versions`).
    pub name: String,
    /// Images in it.
    pub image_count: i64,
    /// Its description, when one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// The platform status of a Dataset (pure): `processing` until the operator has handled the
/// current generation of a Dataset with a source; one with no source is `ready` and empty.
pub fn status_of(d: &Dataset) -> (&'static str, Option<ProcessingError>) {
    if d.spec.source.is_empty() {
        return ("ready", None);
    }
    let Some(st) = d.status.as_ref() else { return ("processing", None) };
    if st.common.observed_generation < d.metadata.generation {
        return ("processing", None);
    }
    match st.phase {
        DatasetPhase::Ready if st.ingested_hash.is_some() => ("ready", None),
        DatasetPhase::Failed => {
            let failed = st.common.conditions.iter().find(|c| c.type_ == "Failed");
            let message = st
                .job
                .failure
                .as_ref()
                .and_then(|f| f.message.clone())
                .or_else(|| failed.and_then(|c| c.message.clone()))
                .unwrap_or_else(|| "ingest failed".into());
            let timestamp = st.job.completion_time.as_ref().map(rfc3339);
            ("failed", Some(ProcessingError { message, timestamp }))
        }
        _ => ("processing", None),
    }
}

/// The item of a Dataset (pure).
pub fn dataset_item(d: &Dataset) -> DatasetItem {
    let ns = d.namespace().unwrap_or_default();
    let name = d.name_any();
    let id = dataset_id(d);
    let ann = d.annotations();
    let st = d.status.clone().unwrap_or_default();
    let counts = st.counts.clone().unwrap_or_default();
    let split = |k: &str| counts.per_split.get(k).copied().unwrap_or(0);
    let (status, processing_error) = status_of(d);
    let created = d.metadata.creation_timestamp.as_ref().map(rfc3339).unwrap_or_default();
    let versions = st
        .versions
        .iter()
        .enumerate()
        .map(|(i, v)| VersionItem {
            version: i + 1,
            name: v.name.clone(),
            image_count: v.images,
            description: d.spec.versions.iter().find(|r| r.name == v.name).and_then(|r| r.description.clone()),
        })
        .collect();
    DatasetItem {
        underscore_id: id.clone(),
        id,
        owner: ns.clone(),
        username: ns,
        dataset: name.clone(),
        slug: name.clone(),
        name: ann.get(DISPLAY_NAME).cloned().unwrap_or(name),
        description: ann.get(DESCRIPTION).cloned(),
        visibility: ann.get(VISIBILITY).cloned().unwrap_or_else(|| "private".into()),
        task: d.spec.task,
        status: status.into(),
        processing_error,
        image_count: counts.images,
        class_count: counts.classes,
        class_names: if st.class_names.is_empty() { d.spec.class_names.clone() } else { st.class_names.clone() },
        annotation_count: counts.annotations,
        splits: Splits { train: split("train"), val: split("val"), test: split("test"), labeled: counts.images },
        versions,
        star_count: 0,
        is_starred: false,
        updated_at: st.job.completion_time.as_ref().map(rfc3339).unwrap_or_else(|| created.clone()),
        created_at: created,
    }
}

/// `ds_` and the uid without dashes: never a valid namespace or Dataset name, so ids and slugs
/// cannot be confused in paths.
pub fn dataset_id(d: &Dataset) -> String {
    format!("ds_{}", d.metadata.uid.as_deref().unwrap_or_default().replace('-', ""))
}

/// A slug from a display name: lowercase letters, digits and dashes, at most 63 characters.
pub fn slugify(name: &str) -> String {
    let mut s = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            s.push(c);
        } else if !s.ends_with('-') && !s.is_empty() {
            s.push('-');
        }
    }
    s.truncate(63);
    s.trim_end_matches('-').to_string()
}

/// A Dataset of the caller's namespace by slug or `ds_` id.
pub fn find(api: &UltralyticsApi, ns: &str, slug_or_id: &str) -> Result<Arc<Dataset>, ApiError> {
    let found = if slug_or_id.starts_with("ds_") {
        api.datasets_in(ns).into_iter().find(|d| dataset_id(d) == slug_or_id)
    } else {
        api.dataset(ns, slug_or_id)
    };
    found.ok_or_else(|| ApiError::NotFound(format!("dataset '{slug_or_id}'")))
}

/// List query (both forms).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Most items to return (default and maximum 1000).
    pub limit: Option<usize>,
    /// The workspace (reference form); must be the key's.
    pub owner: Option<String>,
    /// The workspace (reference form); must be the key's.
    pub username: Option<String>,
    /// Only this slug (reference form).
    pub slug: Option<String>,
}

/// `GET` list response.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatasetList {
    /// Newest first.
    pub datasets: Vec<DatasetItem>,
    /// Datasets in the workspace (before `limit`).
    pub total: usize,
    /// Always `us`.
    pub region: String,
}

/// [`DatasetList`] as sent: each item's JSON rendered once per Dataset version
/// ([`super::rendered`]), so a list of 1000 sorts and joins fragments.
#[derive(Serialize)]
struct RenderedList<'a> {
    datasets: Vec<&'a RawValue>,
    total: usize,
    region: &'static str,
}

fn list(api: &UltralyticsApi, ns: &str, q: &ListQuery) -> Result<Response, ApiError> {
    if q.limit == Some(0) {
        return Err(ApiError::bad_request("limit", "must be at least 1"));
    }
    let mut all: Vec<Arc<Dataset>> = api
        .datasets_in(ns)
        .into_iter()
        .filter(|d| q.slug.as_deref().is_none_or(|s| d.metadata.name.as_deref() == Some(s)))
        .collect();
    all.sort_by(|a, b| {
        let t = |d: &Dataset| d.metadata.creation_timestamp.as_ref().map(|t| t.0);
        t(b).cmp(&t(a)).then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    let total = all.len();
    all.truncate(q.limit.unwrap_or(MAX_LIMIT).min(MAX_LIMIT));
    let items = api.dataset_items.render(&all, api.datasets.len(), dataset_item).map_err(ApiError::internal)?;
    let datasets = items.iter().map(|i| &**i).collect();
    Ok(Json(RenderedList { datasets, total, region: REGION }).into_response())
}

/// The datasets of the caller's workspace (reference form).
#[utoipa::path(get, path = "/api/datasets", tag = "ultralytics", params(ListQuery),
    responses((status = 200, body = DatasetList), crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn list_own(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    principal.require(Action::Read)?;
    for owner in [&q.owner, &q.username].into_iter().flatten() {
        own_workspace(&principal, owner)?;
    }
    list(&api, &principal.namespace, &q)
}

/// `GET /api/datasets/{owner}` lists a workspace's datasets (SDK); `GET /api/datasets/{id}`
/// with a `ds_` id retrieves one (reference).
#[utoipa::path(get, path = "/api/datasets/{owner}", tag = "ultralytics",
    params(("owner" = String, Path, description = "Workspace (the key's namespace), or a `ds_` dataset id"), ListQuery),
    responses((status = 200, body = DatasetList), (status = 404, body = crate::api::error::ErrorBody), crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn list_or_retrieve_by_id(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Path(owner): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    principal.require(Action::Read)?;
    if owner.starts_with("ds_") {
        let d = find(&api, &principal.namespace, &owner)?;
        return Ok(Json(serde_json::json!({ "dataset": dataset_item(&d) })).into_response());
    }
    let ns = own_workspace(&principal, &owner)?;
    list(&api, ns, &q)
}

/// `POST /api/datasets` body: the SDK's keys and the reference's.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateDataset {
    /// The slug (SDK): lowercase letters, digits and dashes, at most 63. Default: from `name`.
    pub dataset: Option<String>,
    /// The slug (reference).
    pub slug: Option<String>,
    /// Display name.
    pub name: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// `private` (default) or `public`.
    pub visibility: Option<String>,
    /// `detect` (default), `segment`, `classify`, `pose` or `obb`.
    #[schema(value_type = Option<String>)]
    pub task: Option<Task>,
    /// Class names in index order (default: from the uploaded data).
    pub class_names: Option<Vec<String>>,
    /// The workspace; must be the key's.
    pub owner: Option<String>,
}

/// `POST /api/datasets` response.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedDataset {
    /// `ds_` id.
    pub id: String,
    /// The same id (reference).
    #[serde(rename = "_id")]
    pub underscore_id: String,
    /// The workspace.
    pub owner: String,
    /// The slug.
    pub dataset: String,
    /// The slug (reference).
    pub slug: String,
    /// Always `us`.
    pub region: String,
}

/// The Dataset a create request asks for (pure): validated, no source yet.
pub fn build(ns: &str, body: &CreateDataset) -> Result<Dataset, ApiError> {
    let slug = match (body.dataset.as_deref().or(body.slug.as_deref()), body.name.as_deref()) {
        (Some(s), _) => s.to_string(),
        (None, Some(n)) => slugify(n),
        (None, None) => return Err(ApiError::bad_request("dataset", "give a slug (`dataset`) or a `name`")),
    };
    if !crate::api::keys::is_namespace_name(&slug) {
        return Err(ApiError::bad_request(
            "dataset",
            format!(
                "'{slug}' is not a valid slug: 1 to 63 lowercase letters, digits and dashes, starting and ending with a letter or digit"
            ),
        ));
    }
    let visibility = body.visibility.clone().unwrap_or_else(|| "private".into());
    if visibility != "private" && visibility != "public" {
        return Err(ApiError::bad_request("visibility", "must be `private` or `public`"));
    }
    let classes = body.class_names.clone().unwrap_or_default();
    let mut seen = std::collections::BTreeSet::new();
    if let Some(dup) = classes.iter().find(|c| !seen.insert(c.as_str())) {
        return Err(ApiError::bad_request("classNames", format!("'{dup}' appears twice")));
    }
    let mut d = Dataset::new(
        &slug,
        DatasetSpec {
            task: body.task.unwrap_or_default(),
            class_names: classes,
            source: DatasetSource::default(),
            format: Default::default(),
            split: None,
            validation: None,
            versions: vec![],
        },
    );
    d.metadata.namespace = Some(ns.into());
    d.metadata.labels = Some(BTreeMap::from([(MANAGED_BY.0.into(), MANAGED_BY.1.into())]));
    let mut ann = BTreeMap::from([(VISIBILITY.to_string(), visibility)]);
    ann.insert(DISPLAY_NAME.into(), body.name.clone().unwrap_or_else(|| slug.clone()));
    if let Some(desc) = &body.description {
        ann.insert(DESCRIPTION.into(), desc.clone());
    }
    d.metadata.annotations = Some(ann);
    Ok(d)
}

/// Creates a dataset with no data yet (upload, then ingest).
#[utoipa::path(post, path = "/api/datasets", tag = "ultralytics", request_body = CreateDataset,
    responses((status = 201, body = CreatedDataset), (status = 400, body = crate::api::error::ErrorBody),
        (status = 409, body = crate::api::error::ErrorBody), crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn create(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    ApiJson(body): ApiJson<CreateDataset>,
) -> Result<(StatusCode, Json<CreatedDataset>), ApiError> {
    principal.require(Action::Write)?;
    if let Some(owner) = &body.owner {
        own_workspace(&principal, owner)?;
    }
    let d = build(&principal.namespace, &body)?;
    let created = api.cluster.create_dataset(d).await?;
    let id = dataset_id(&created);
    let slug = created.name_any();
    api.recent.wrote(created);
    tracing::info!(namespace = %principal.namespace, dataset = %slug, key = %principal.key_id, "dataset created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedDataset {
            underscore_id: id.clone(),
            id,
            owner: principal.namespace.clone(),
            dataset: slug.clone(),
            slug,
            region: REGION.into(),
        }),
    ))
}

/// `GET /api/datasets/{owner}/{dataset}` response.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RetrievedDataset {
    /// The dataset.
    pub dataset: DatasetItem,
}

/// One dataset.
#[utoipa::path(get, path = "/api/datasets/{owner}/{dataset}", tag = "ultralytics",
    params(("owner" = String, Path), ("dataset" = String, Path, description = "Slug or `ds_` id")),
    responses((status = 200, body = RetrievedDataset), (status = 404, body = crate::api::error::ErrorBody), crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn retrieve(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Path((owner, dataset)): Path<(String, String)>,
) -> Result<Json<RetrievedDataset>, ApiError> {
    principal.require(Action::Read)?;
    let ns = own_workspace(&principal, &owner)?;
    let d = find(&api, ns, &dataset)?;
    Ok(Json(RetrievedDataset { dataset: dataset_item(&d) }))
}

/// `GET /api/datasets/{owner}/{dataset}`, and the reference's id forms `GET
/// /api/datasets/{ds_id}/class-stats|export`.
pub async fn get_item(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Path((owner, dataset)): Path<(String, String)>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    if !owner.starts_with("ds_") {
        return Ok(retrieve(State(api), principal, Path((owner, dataset))).await?.into_response());
    }
    let ns = principal.namespace.clone();
    match dataset.as_str() {
        "class-stats" => Ok(class_stats(State(api), principal, Path((ns, owner))).await?.into_response()),
        "export" => {
            Ok(export(State(api), principal, Path((ns, owner)), Query(ExportQuery::default())).await?.into_response())
        }
        _ => Err(super::compat::answer("GET", &format!("/api/datasets/{owner}/{dataset}"))),
    }
}

/// `GET /api/datasets/{owner}/{dataset}/export` query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// A frozen version by number: `v=2` is the version named `v2` (else the second listed).
    /// Unset: the current manifest.
    pub v: Option<u32>,
}

/// `GET /api/datasets/{owner}/{dataset}/export` response.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatasetExport {
    /// A presigned `GET` of the dataset in Ultralytics' NDJSON (images as presigned URLs), valid
    /// 12 hours.
    pub download_url: String,
    /// The version asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Always false: the NDJSON is written anew, since the image URLs in it expire.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached: Option<bool>,
}

/// The manifest URI of `d` at version `v` (pure): the version named `v<N>`, else the N-th; the
/// current manifest without `v`.
pub fn manifest_for(d: &Dataset, v: Option<u32>) -> Result<String, ApiError> {
    let st = d.status.as_ref();
    match v {
        None => st.and_then(|s| s.manifest_uri.clone()).ok_or_else(|| {
            ApiError::Conflict(format!("dataset '{}' has no manifest yet: ingest it first", d.name_any()))
        }),
        Some(n) => {
            let versions = st.map(|s| s.versions.as_slice()).unwrap_or_default();
            versions
                .iter()
                .find(|x| x.name == format!("v{n}"))
                .or_else(|| n.checked_sub(1).and_then(|i| versions.get(i as usize)))
                .map(|x| x.manifest_uri.clone())
                .ok_or_else(|| ApiError::NotFound(format!("version {n} of dataset '{}'", d.name_any())))
        }
    }
}

/// The dataset in Ultralytics' NDJSON: what `ultralytics` trains on for
/// `data="ul://<owner>/datasets/<slug>"`.
#[utoipa::path(get, path = "/api/datasets/{owner}/{dataset}/export", tag = "ultralytics",
    params(("owner" = String, Path), ("dataset" = String, Path, description = "Slug or `ds_` id"), ExportQuery),
    responses((status = 200, body = DatasetExport), (status = 404, body = crate::api::error::ErrorBody),
        (status = 409, body = crate::api::error::ErrorBody), crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn export(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Path((owner, dataset)): Path<(String, String)>,
    Query(q): Query<ExportQuery>,
) -> Result<Json<DatasetExport>, ApiError> {
    principal.require(Action::Read)?;
    let ns = own_workspace(&principal, &owner)?;
    let d = find(&api, ns, &dataset)?;
    let manifest = manifest_for(&d, q.v)?;
    let Some(uploads) = api.uploads.as_ref() else {
        return Err(ApiError::NotImplemented { what: "dataset exports without object storage".into() });
    };
    let tag = q.v.map(|v| format!("v{v}")).unwrap_or_else(|| "current".into());
    let key = format!("{ns}/datasets/{}/exports/{tag}.ndjson", d.name_any());
    let download_url = uploads.export_manifest(&manifest, &key).await?;
    Ok(Json(DatasetExport { download_url, version: q.v, cached: q.v.is_none().then_some(false) }))
}

/// The dataset's class distribution, image sizes and object location and size heatmaps: the
/// `classStats` of its current ingest's summary (computed over every image at ingest, in the
/// platform's shape).
#[utoipa::path(get, path = "/api/datasets/{owner}/{dataset}/class-stats", tag = "ultralytics",
    params(("owner" = String, Path), ("dataset" = String, Path, description = "Slug or `ds_` id")),
    responses((status = 200, body = Object), (status = 404, body = crate::api::error::ErrorBody),
        (status = 409, body = crate::api::error::ErrorBody), crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn class_stats(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Path((owner, dataset)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    principal.require(Action::Read)?;
    let ns = own_workspace(&principal, &owner)?;
    let d = find(&api, ns, &dataset)?;
    let summary = d.status.as_ref().and_then(|s| s.summary_uri.clone()).ok_or_else(|| {
        ApiError::Conflict(format!("dataset '{}' has no ingest summary yet: ingest it first", d.name_any()))
    })?;
    let Some(uploads) = api.uploads.as_ref() else {
        return Err(ApiError::NotImplemented { what: "class statistics without object storage".into() });
    };
    let bytes = uploads.read(&summary).await?;
    let mut summary: serde_json::Value = serde_json::from_slice(&bytes).map_err(ApiError::internal)?;
    match summary.get_mut("classStats").map(serde_json::Value::take) {
        Some(stats) if stats.is_object() => Ok(Json(stats)),
        _ => Err(ApiError::internal(format!("the summary of dataset '{}' has no classStats", d.name_any()))),
    }
}

/// `{"success": true}`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Success {
    /// Always `true`.
    pub success: bool,
}

async fn remove(api: &UltralyticsApi, principal: &Principal, ns: &str, slug_or_id: &str) -> Result<Success, ApiError> {
    principal.require(Action::Write)?;
    let d = find(api, ns, slug_or_id)?;
    let name = d.name_any();
    api.cluster.delete_dataset(ns, &name).await?;
    api.recent.deleted(ns, &name, d.metadata.uid.clone());
    tracing::info!(namespace = %ns, dataset = %name, key = %principal.key_id, "dataset deleted");
    Ok(Success { success: true })
}

/// Deletes a dataset (its objects stay in the bucket).
#[utoipa::path(delete, path = "/api/datasets/{owner}/{dataset}", tag = "ultralytics",
    params(("owner" = String, Path), ("dataset" = String, Path, description = "Slug or `ds_` id")),
    responses((status = 200, body = Success), (status = 404, body = crate::api::error::ErrorBody), crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn delete(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Path((owner, dataset)): Path<(String, String)>,
) -> Result<Json<Success>, ApiError> {
    let ns = own_workspace(&principal, &owner)?.to_string();
    Ok(Json(remove(&api, &principal, &ns, &dataset).await?))
}

/// Deletes a dataset by `ds_` id (reference form).
#[utoipa::path(delete, path = "/api/datasets/{datasetId}", tag = "ultralytics",
    params(("datasetId" = String, Path, description = "`ds_` id")),
    responses((status = 200, body = Success), (status = 404, body = crate::api::error::ErrorBody), crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn delete_by_id(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Success>, ApiError> {
    if !id.starts_with("ds_") {
        return Err(ApiError::NotFound(format!("dataset '{id}'")));
    }
    let ns = principal.namespace.clone();
    Ok(Json(remove(&api, &principal, &ns, &id).await?))
}

/// `ingest` body.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngestRequest {
    /// The `sessionId` of an upload (`POST /api/upload/signed-url`) into this dataset.
    pub session_id: Option<String>,
    /// An archive to ingest instead: `s3://bucket/key.zip` (platform credentials; in the
    /// platform bucket only under the workspace's own prefix) or `https://…/x.zip`.
    pub source_url: Option<String>,
    /// The dataset (reference form, `POST /api/datasets/ingest`).
    pub dataset_id: Option<String>,
    /// `replace` (what an ingest does: the new data replaces the dataset's content); `skip` and
    /// `keep_both` merge into existing images, which is not implemented.
    pub conflict_policy: Option<String>,
    /// Not implemented (the upload's own split directories are used).
    pub target_split: Option<String>,
    /// Not implemented.
    pub class_mapping: Option<serde_json::Value>,
    /// Not implemented.
    pub reference: Option<serde_json::Value>,
}

/// `ingest` response.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngestAccepted {
    /// `<dataset>-<generation>`: the Dataset generation that carries this source.
    pub job_id: String,
    /// Always `queued`: poll the dataset until its `status` is `ready` or `failed`.
    pub status: String,
}

/// The source an ingest request names (pure): the checks that keep a tenant in its own data.
pub fn ingest_source(
    ns: &str,
    dataset: &Dataset,
    body: &IngestRequest,
    platform_bucket: Option<&str>,
) -> Result<DatasetSource, ApiError> {
    for (field, given) in [
        ("targetSplit", body.target_split.is_some()),
        ("classMapping", body.class_mapping.as_ref().is_some_and(|v| !v.is_null())),
        ("reference", body.reference.as_ref().is_some_and(|v| !v.is_null())),
    ] {
        if given {
            return Err(ApiError::NotImplemented { what: format!("ingest with `{field}`") });
        }
    }
    match body.conflict_policy.as_deref() {
        None | Some("replace") => {}
        Some(p @ ("skip" | "keep_both")) if !dataset.spec.source.is_empty() => {
            return Err(ApiError::NotImplemented {
                what: format!(
                    "ingest with conflictPolicy `{p}` into a dataset with data (an ingest replaces it: use `replace`)"
                ),
            });
        }
        Some("skip" | "keep_both") => {}
        Some(other) => {
            return Err(ApiError::bad_request(
                "conflictPolicy",
                format!("'{other}' is not skip, keep_both or replace"),
            ));
        }
    }
    match (body.session_id.as_deref(), body.source_url.as_deref()) {
        (Some(_), Some(_)) | (None, None) => {
            Err(ApiError::bad_request("body", "give exactly one of `sessionId` and `sourceUrl`"))
        }
        (Some(session), None) => {
            let key = super::upload::session_key(session, ns)?;
            let prefix = super::upload::upload_prefix(ns, &dataset.name_any());
            let rel = key
                .strip_prefix(&prefix)
                .filter(|r| !r.is_empty())
                .ok_or_else(|| ApiError::bad_request("sessionId", "the upload is not one of this dataset's"))?;
            Ok(DatasetSource { upload: Some(UploadSource { objects: vec![rel.to_string()] }), ..Default::default() })
        }
        (None, Some(url)) if url.starts_with("s3://") => {
            let uri = ocellus_storage::S3Uri::parse(url).map_err(|e| ApiError::bad_request("sourceUrl", e))?;
            if platform_bucket == Some(uri.bucket.as_str()) && !uri.key.starts_with(&format!("{ns}/")) {
                return Err(ApiError::Forbidden(format!(
                    "sourceUrl: in the platform bucket, only objects under '{ns}/' may be ingested"
                )));
            }
            Ok(DatasetSource {
                s3: Some(S3Source { uri: url.into(), endpoint: None, region: None, credentials: None }),
                ..Default::default()
            })
        }
        (None, Some(url)) if url.starts_with("https://") || url.starts_with("http://") => Ok(DatasetSource {
            https: Some(HttpsSource { url: url.into(), headers_secret: None }),
            ..Default::default()
        }),
        (None, Some(_)) => Err(ApiError::bad_request("sourceUrl", "must be an s3://, https:// or http:// URL")),
    }
}

async fn start_ingest(
    api: &UltralyticsApi,
    principal: &Principal,
    ns: &str,
    slug_or_id: &str,
    body: &IngestRequest,
) -> Result<IngestAccepted, ApiError> {
    principal.require(Action::Write)?;
    let d = find(api, ns, slug_or_id)?;
    let source = ingest_source(ns, &d, body, api.platform_bucket.as_deref())?;
    let name = d.name_any();
    let changed = api.cluster.set_dataset_source(ns, &name, source).await?;
    let job_id = format!("{name}-{}", changed.metadata.generation.unwrap_or(1));
    api.recent.wrote(changed);
    tracing::info!(namespace = %ns, dataset = %name, key = %principal.key_id, "dataset ingest requested");
    Ok(IngestAccepted { job_id, status: "queued".into() })
}

/// Ingests an upload or an archive URL into a dataset (replacing its content).
#[utoipa::path(post, path = "/api/datasets/{owner}/{dataset}/ingest", tag = "ultralytics", request_body = IngestRequest,
    params(("owner" = String, Path), ("dataset" = String, Path, description = "Slug or `ds_` id")),
    responses((status = 202, body = IngestAccepted), (status = 400, body = crate::api::error::ErrorBody),
        (status = 404, body = crate::api::error::ErrorBody), (status = 501, body = crate::api::error::ErrorBody),
        crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn ingest(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Path((owner, dataset)): Path<(String, String)>,
    ApiJson(body): ApiJson<IngestRequest>,
) -> Result<(StatusCode, Json<IngestAccepted>), ApiError> {
    let ns = own_workspace(&principal, &owner)?.to_string();
    Ok((StatusCode::ACCEPTED, Json(start_ingest(&api, &principal, &ns, &dataset, &body).await?)))
}

/// Ingest, reference form: the dataset by `datasetId` in the body.
#[utoipa::path(post, path = "/api/datasets/ingest", tag = "ultralytics", request_body = IngestRequest,
    responses((status = 202, body = IngestAccepted), (status = 400, body = crate::api::error::ErrorBody),
        (status = 404, body = crate::api::error::ErrorBody), crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn ingest_by_id(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    ApiJson(body): ApiJson<IngestRequest>,
) -> Result<(StatusCode, Json<IngestAccepted>), ApiError> {
    let id = body.dataset_id.clone().ok_or_else(|| ApiError::bad_request("datasetId", "required"))?;
    let ns = principal.namespace.clone();
    Ok((StatusCode::ACCEPTED, Json(start_ingest(&api, &principal, &ns, &id, &body).await?)))
}

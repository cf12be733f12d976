//! Models, their training and their exports.
//!
//! A platform model is a record (a ConfigMap `ocellus-model-<id>`, `ocellus.dev/record=model`)
//! owned by its project's record; `POST /api/training/start` creates its `TrainingJob`, owned by
//! the model's record, and `POST …/exports` an `Export` of that TrainingJob's `best` weights,
//! owned by the TrainingJob. The model's status, progress, metrics and files are read from the
//! TrainingJob; an export's from its Export. The model id is derived from the workspace-local
//! `project/model` pair, so two replicas cannot create the same model twice.
//!
//! - `POST /api/models {project, model?, name?, task?, description?, owner?}`;
//! - `GET /api/models/{owner}/{project}`, `GET|DELETE /api/models/{owner}/{project}/{model}`;
//! - `POST /api/training/start {modelId, trainArgs, gpuType?}`;
//! - `GET|DELETE /api/models/{owner}/{project}/{model}/training`: progress, or cancel;
//! - `GET /api/models/{owner}/{project}/{model}/files`: presigned URLs of the checkpoints;
//! - `GET|POST /api/models/{owner}/{project}/{model}/exports`,
//!   `GET|DELETE …/exports/{exportId}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use ocellus_crds::{
    CheckpointKind, Dataset, DatasetRef, EpochMetrics, Export, ExportFormat, ExportPhase, ExportSource, ExportSpec,
    Hyperparameters, ModelSpec, Optimizer, Task, TrainingJob, TrainingJobCheckpointRef, TrainingJobSpec, TrainingPhase,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::datasets::{DESCRIPTION, DISPLAY_NAME, MANAGED_BY, MAX_LIMIT, Success};
use super::projects::{self, PROJECT, RECORD, check_slug};
use super::{REGION, UltralyticsApi, own_workspace, rfc3339};
use crate::api::{Action, ApiError, ApiJson, Principal};

/// Label with the model's slug, on its record, TrainingJob and Exports.
pub const MODEL: &str = "ocellus.dev/model";
/// Annotation on a TrainingJob and its Exports: the platform model id.
pub const MODEL_ID: &str = "ocellus.dev/model-id";
/// Annotation on a TrainingJob: the `gpuType` it was started with.
pub const GPU_TYPE: &str = "ocellus.dev/gpu-type";
/// Key of a model record's data: the task it was created for.
const TASK_KEY: &str = "task";

pub(super) fn routes() -> Router<UltralyticsApi> {
    let f = super::compat::fallback;
    Router::new()
        .route("/api/models", post(create).fallback(f))
        .route("/api/training/start", post(start_training).fallback(f))
        .route("/api/models/{owner}/{project}/{model}", get(retrieve).delete(delete).fallback(f))
        .route("/api/models/{owner}/{project}/{model}/training", get(training).delete(cancel_training).fallback(f))
        .route("/api/models/{owner}/{project}/{model}/files", get(files).fallback(f))
        .route("/api/models/{owner}/{project}/{model}/predict", post(super::deployments::predict_by_model).fallback(f))
        .route("/api/models/{owner}/{project}", get(list).post(predict_by_id).fallback(f))
        .route("/api/models/{owner}/{project}/{model}/exports", get(list_exports).post(create_export).fallback(f))
        .route(
            "/api/models/{owner}/{project}/{model}/exports/{export}",
            get(retrieve_export).delete(delete_export).fallback(f),
        )
}

/// The reference's `POST /api/models/{modelId}/predict` (the path of `/{owner}/{project}`):
/// the model by its id, in the key's workspace.
async fn predict_by_id(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Path((id, action)): Path<(String, String)>,
    req: axum::extract::Request,
) -> Result<axum::response::Response, ApiError> {
    let is_id = id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit());
    if action != "predict" || !is_id {
        return Err(super::compat::answer("POST", &format!("/api/models/{id}/{action}")));
    }
    let ns = principal.namespace.clone();
    let record = api
        .record(&ns, &record_name(&id))
        .filter(|r| is_model(r))
        .ok_or_else(|| ApiError::NotFound(format!("model '{id}'")))?;
    let (project, model) = slugs_of(&record);
    super::deployments::predict_by_model(State(api), principal, Path((ns, project, model)), req).await
}

/// The id of model `model` of `project`: 12 hex digits of a SHA-256 of both slugs.
pub fn model_id(project: &str, model: &str) -> String {
    hex::encode(&Sha256::digest(format!("{project}/{model}"))[..6])
}

/// The record name of a model id.
pub fn record_name(id: &str) -> String {
    format!("ocellus-model-{id}")
}

/// The TrainingJob name of a model: its slug and 8 digits of its id (slugs repeat across projects).
pub fn training_job_name(model: &str, id: &str) -> String {
    format!("{model}-{}", &id[..8])
}

pub fn is_model(cm: &ConfigMap) -> bool {
    cm.labels().get(RECORD).map(String::as_str) == Some("model")
}

/// The model records of `project` among a namespace's records, newest first.
pub fn models_of(records: &[Arc<ConfigMap>], project: &str) -> Vec<Arc<ConfigMap>> {
    let mut models: Vec<Arc<ConfigMap>> = records
        .iter()
        .filter(|cm| is_model(cm) && cm.labels().get(PROJECT).map(String::as_str) == Some(project))
        .cloned()
        .collect();
    models.sort_by(|a, b| {
        let t = |c: &ConfigMap| c.metadata.creation_timestamp.as_ref().map(|t| t.0);
        t(b).cmp(&t(a)).then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    models
}

/// The slugs of `project`'s models.
pub fn model_slugs(records: &[Arc<ConfigMap>], project: &str) -> Vec<String> {
    models_of(records, project).iter().filter_map(|m| m.labels().get(MODEL).cloned()).collect()
}

/// The project and model slugs of a model record.
pub fn slugs_of(cm: &ConfigMap) -> (String, String) {
    let l = cm.labels();
    (l.get(PROJECT).cloned().unwrap_or_default(), l.get(MODEL).cloned().unwrap_or_default())
}

/// An owner reference to `o` (the garbage collector deletes the child with it).
fn owned_by<K: Resource<DynamicType = ()>>(o: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: o.meta().name.clone().unwrap_or_default(),
        uid: o.meta().uid.clone().unwrap_or_default(),
        ..Default::default()
    }
}

/// A model record of `ns` by project and model slug.
pub fn find(api: &UltralyticsApi, ns: &str, project: &str, model: &str) -> Result<Arc<ConfigMap>, ApiError> {
    projects::find(api, ns, project)?;
    api.record(ns, &record_name(&model_id(project, model)))
        .filter(|cm| is_model(cm) && slugs_of(cm) == (project.to_string(), model.to_string()))
        .ok_or_else(|| ApiError::NotFound(format!("model '{project}/{model}'")))
}

/// The TrainingJob of a model record, if training was started.
pub fn training_job_of(api: &UltralyticsApi, record: &ConfigMap) -> Option<Arc<TrainingJob>> {
    let ns = record.namespace().unwrap_or_default();
    let (_, model) = slugs_of(record);
    let id = record.name_any().trim_start_matches("ocellus-model-").to_string();
    api.training_job(&ns, &training_job_name(&model, &id))
        .filter(|tj| tj.owner_references().iter().any(|r| Some(&r.uid) == record.metadata.uid.as_ref()))
}

/// The platform status of a model (pure): `untrained` without a TrainingJob, then `starting`,
/// `running`, `pending` (paused), `completed` or `failed` from its phase.
pub fn status_of(tj: Option<&TrainingJob>) -> &'static str {
    let Some(tj) = tj else { return "untrained" };
    let Some(st) = &tj.status else { return "starting" };
    if st.common.observed_generation < tj.metadata.generation {
        return "starting";
    }
    match st.phase {
        TrainingPhase::Pending => "starting",
        TrainingPhase::Running => "running",
        TrainingPhase::Suspended => "pending",
        TrainingPhase::Succeeded => "completed",
        TrainingPhase::Failed => "failed",
    }
}

/// The task an architecture trains.
fn task_of_architecture(arch: &str) -> Task {
    match arch.rsplit_once('-').map(|(_, s)| s) {
        Some("cls") => Task::Classify,
        Some("seg") => Task::Segment,
        Some("pose") => Task::Pose,
        Some("obb") => Task::Obb,
        _ => Task::Detect,
    }
}

/// Validation metrics with Ultralytics' names (`metrics/mAP50-95(B)`, …).
fn metric_map(m: &EpochMetrics) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (k, v) in [
        ("metrics/precision(B)", m.precision),
        ("metrics/recall(B)", m.recall),
        ("metrics/mAP50(B)", m.map50),
        ("metrics/mAP50-95(B)", m.map50_95),
        ("metrics/accuracy_top1", m.top1),
        ("train/box_loss", m.box_loss),
        ("train/cls_loss", m.cls_loss),
        ("train/dfl_loss", m.dfl_loss),
    ] {
        if let Some(v) = v {
            out.insert(k.to_string(), v);
        }
    }
    out
}

/// Why training failed.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TrainingError {
    /// The failure's message.
    pub message: String,
    /// Its reason, e.g. `BackoffLimitExceeded`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// When it failed (RFC 3339), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
}

fn training_error(tj: &TrainingJob) -> Option<TrainingError> {
    let st = tj.status.as_ref()?;
    if st.phase != TrainingPhase::Failed {
        return None;
    }
    let f = st.job.failure.clone().unwrap_or_default();
    let cond = st.common.conditions.iter().find(|c| c.type_ == "Failed" || c.type_ == "Ready");
    Some(TrainingError {
        message: f.message.or_else(|| cond.and_then(|c| c.message.clone())).unwrap_or_else(|| "training failed".into()),
        code: f.reason,
        timestamp: st.job.completion_time.as_ref().map(rfc3339),
    })
}

/// The dataset a model trains on.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DatasetSlug {
    /// The workspace.
    pub owner: String,
    /// The Dataset's name.
    pub dataset: String,
}

/// A model as lists, projects and `retrieve` show it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelItem {
    /// The model id (`modelId` of `training/start`).
    pub id: String,
    /// The workspace (namespace).
    pub owner: String,
    /// The project's slug.
    pub project: String,
    /// The project's slug (display names live on the project).
    pub project_name: String,
    /// The model's slug.
    pub model: String,
    /// Display name.
    pub name: String,
    /// Description, when one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Always `private`: access is by namespace.
    pub visibility: String,
    /// `untrained`, `starting`, `running`, `pending` (paused), `completed` or `failed`.
    pub status: String,
    /// The vision task, once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub task: Option<Task>,
    /// Whether weights exist (a `best` or `last` checkpoint).
    pub has_weights: bool,
    /// The TrainingJob's name, once training started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub training_job: Option<String>,
    /// The Dataset trained on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset: Option<DatasetSlug>,
    /// The architecture, e.g. `yolov8n`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_model: Option<String>,
    /// Epochs asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<i32>,
    /// Epochs done.
    pub epoch_count: i32,
    /// Epoch of the best validation fitness.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_epoch: Option<i32>,
    /// The training arguments, with Ultralytics' names.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub train_args: Option<Value>,
    /// The best epoch's metrics, with Ultralytics' names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<BTreeMap<String, f64>>,
    /// Class names, once the Dataset is ingested.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class_names: Option<Vec<String>>,
    /// When training started (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When training ended (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    /// Why training failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub training_error: Option<TrainingError>,
    /// Always 0.
    pub star_count: i64,
    /// Always `false`.
    pub is_starred: bool,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// The last change: training's end, else its start, else the creation.
    pub updated_at: String,
}

/// The training arguments of a TrainingJob, with Ultralytics' names (pure).
pub fn train_args(tj: &TrainingJob) -> Value {
    let h = &tj.spec.hyperparameters;
    json!({
        "model": tj.spec.model.architecture,
        "data": format!("ul://{}/datasets/{}", tj.namespace().unwrap_or_default(), tj.spec.dataset_ref.name),
        "epochs": h.epochs, "imgsz": h.imgsz, "batch": h.batch, "patience": h.patience, "lr0": h.lr0,
        "lrf": h.lrf, "optimizer": h.optimizer, "cos_lr": h.cos_lr, "warmup_epochs": h.warmup_epochs,
        "seed": h.seed, "amp": h.amp,
    })
}

/// The item of a model record and its TrainingJob (pure).
pub fn model_item(record: &ConfigMap, tj: Option<&TrainingJob>, dataset: Option<&Dataset>) -> ModelItem {
    let (project, model) = slugs_of(record);
    let ann = record.annotations();
    let created = record.metadata.creation_timestamp.as_ref().map(rfc3339).unwrap_or_default();
    let st = tj.and_then(|t| t.status.clone()).unwrap_or_default();
    let recorded_task = record.data.as_ref().and_then(|d| d.get(TASK_KEY)).and_then(|t| t.parse::<Task>().ok());
    let started = st.job.start_time.as_ref().map(rfc3339);
    let completed = st.job.completion_time.as_ref().map(rfc3339);
    let class_names = dataset.and_then(|d| d.status.as_ref()).map(|s| s.class_names.clone()).filter(|c| !c.is_empty());
    ModelItem {
        id: record.name_any().trim_start_matches("ocellus-model-").to_string(),
        owner: record.namespace().unwrap_or_default(),
        project_name: project.clone(),
        project,
        name: ann.get(DISPLAY_NAME).cloned().unwrap_or_else(|| model.clone()),
        model,
        description: ann.get(DESCRIPTION).cloned(),
        visibility: "private".into(),
        status: status_of(tj).into(),
        task: tj.map(|t| task_of_architecture(&t.spec.model.architecture)).or(recorded_task),
        has_weights: st.checkpoints.as_ref().is_some_and(|c| c.best.is_some() || c.last.is_some()),
        training_job: tj.map(|t| t.name_any()),
        dataset: tj.map(|t| DatasetSlug {
            owner: t.namespace().unwrap_or_default(),
            dataset: t.spec.dataset_ref.name.clone(),
        }),
        base_model: tj.map(|t| t.spec.model.architecture.clone()),
        epochs: tj.map(|t| st.epochs.unwrap_or(t.spec.hyperparameters.epochs)),
        epoch_count: st.epoch.unwrap_or(0),
        best_epoch: st.best_epoch,
        train_args: tj.map(train_args),
        metrics: st.best_metrics.as_ref().map(metric_map),
        class_names,
        started_at: started.clone(),
        training_error: tj.and_then(training_error),
        updated_at: completed.clone().or(started.clone()).unwrap_or_else(|| created.clone()),
        completed_at: completed,
        created_at: created,
        star_count: 0,
        is_starred: false,
    }
}

/// [`model_item`] with the model's TrainingJob and Dataset from the caches.
pub fn model_summary(api: &UltralyticsApi, record: &ConfigMap) -> ModelItem {
    let tj = training_job_of(api, record);
    let ds = tj.as_ref().and_then(|t| api.dataset(&t.namespace().unwrap_or_default(), &t.spec.dataset_ref.name));
    model_item(record, tj.as_deref(), ds.as_deref())
}

/// `POST /api/models` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateModel {
    /// The project's slug (it must exist).
    pub project: String,
    /// The model's slug: lowercase letters, digits and dashes, at most 40. Default: from `name`,
    /// else `model-<n>`.
    pub model: Option<String>,
    /// Display name.
    pub name: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// The task it will be trained for (`detect`, `classify`, …); training decides otherwise.
    #[schema(value_type = Option<String>)]
    pub task: Option<Task>,
    /// The workspace; must be the key's.
    pub owner: Option<String>,
}

/// `POST /api/models` response.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedModel {
    /// The model id (`modelId` of `training/start`).
    pub id: String,
    /// The workspace.
    pub owner: String,
    /// The project's slug.
    pub project: String,
    /// The model's slug.
    pub model: String,
    /// Display name.
    pub name: String,
    /// Always `us`.
    pub region: String,
}

/// The record a create request asks for (pure), owned by `project`'s record. `taken` says
/// which slugs the project already has, for a default slug.
pub fn build(ns: &str, project: &ConfigMap, body: &CreateModel, taken: &[String]) -> Result<ConfigMap, ApiError> {
    let slug = match (&body.model, &body.name) {
        (Some(m), _) => m.clone(),
        (None, Some(n)) => {
            let mut s = super::datasets::slugify(n);
            s.truncate(projects::MAX_SLUG);
            s.trim_end_matches('-').to_string()
        }
        (None, None) => (1..).map(|i| format!("model-{i}")).find(|s| !taken.contains(s)).unwrap_or_default(),
    };
    check_slug("model", &slug)?;
    let id = model_id(&body.project, &slug);
    let mut ann = BTreeMap::from([(DISPLAY_NAME.to_string(), body.name.clone().unwrap_or_else(|| slug.clone()))]);
    if let Some(d) = &body.description {
        ann.insert(DESCRIPTION.into(), d.clone());
    }
    Ok(ConfigMap {
        metadata: ObjectMeta {
            name: Some(record_name(&id)),
            namespace: Some(ns.into()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY.0.into(), MANAGED_BY.1.into()),
                (RECORD.into(), "model".into()),
                (PROJECT.into(), body.project.clone()),
                (MODEL.into(), slug),
            ])),
            annotations: Some(ann),
            owner_references: Some(vec![owned_by(project)]),
            ..Default::default()
        },
        data: body.task.map(|t| BTreeMap::from([(TASK_KEY.to_string(), t.as_str().to_string())])),
        ..Default::default()
    })
}

/// Creates a model (untrained) in a project.
#[utoipa::path(post, path = "/api/models", tag = "ultralytics", request_body = CreateModel,
    responses((status = 201, body = CreatedModel), (status = 400, body = crate::api::error::ErrorBody),
        (status = 404, body = crate::api::error::ErrorBody), (status = 409, body = crate::api::error::ErrorBody),
        crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn create(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    ApiJson(body): ApiJson<CreateModel>,
) -> Result<(StatusCode, Json<CreatedModel>), ApiError> {
    principal.require(Action::Write)?;
    if let Some(owner) = &body.owner {
        own_workspace(&principal, owner)?;
    }
    let ns = principal.namespace.clone();
    check_slug("project", &body.project)?;
    let project = projects::find(&api, &ns, &body.project)?;
    let record = build(&ns, &project, &body, &model_slugs(&api.records_in(&ns), &body.project))?;
    let (_, slug) = slugs_of(&record);
    let created = api.cluster.create_record(record).await.map_err(|e| match e {
        ApiError::Conflict(_) => ApiError::Conflict(format!("model '{}/{slug}' already exists", body.project)),
        e => e,
    })?;
    let item = model_item(&created, None, None);
    api.recent_records.wrote(created);
    tracing::info!(namespace = %ns, project = %body.project, model = %slug, key = %principal.key_id, "model created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedModel {
            id: item.id,
            owner: ns,
            project: item.project,
            model: item.model,
            name: item.name,
            region: REGION.into(),
        }),
    ))
}

/// List query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Most items to return (default and maximum 1000).
    pub limit: Option<usize>,
}

/// `GET /api/models/{owner}/{project}` response.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelList {
    /// Newest first.
    pub models: Vec<ModelItem>,
    /// Always `us`.
    pub region: String,
}

/// The models of a project.
#[utoipa::path(get, path = "/api/models/{owner}/{project}", tag = "ultralytics",
    params(("owner" = String, Path), ("project" = String, Path), ListQuery),
    responses((status = 200, body = ModelList), (status = 404, body = crate::api::error::ErrorBody), crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn list(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Path((owner, project)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
) -> Result<Json<ModelList>, ApiError> {
    principal.require(Action::Read)?;
    let ns = own_workspace(&principal, &owner)?;
    if q.limit == Some(0) {
        return Err(ApiError::bad_request("limit", "must be at least 1"));
    }
    projects::find(&api, ns, &project)?;
    let limit = q.limit.unwrap_or(MAX_LIMIT).min(MAX_LIMIT);
    let models = models_of(&api.records_in(ns), &project).iter().take(limit).map(|m| model_summary(&api, m)).collect();
    Ok(Json(ModelList { models, region: REGION.into() }))
}

/// `GET /api/models/{owner}/{project}/{model}` response.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetrievedModel {
    /// The model.
    pub model: ModelItem,
    /// Always `true`: a key reaches only its own workspace.
    pub is_owner: bool,
}

/// `analysis=1` asks for the hosted platform's model analysis, which Ocellus does not compute.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RetrieveQuery {
    /// `1` or `true`: answer `{"analysis": null}`.
    pub analysis: Option<String>,
}

/// One model.
#[utoipa::path(get, path = "/api/models/{owner}/{project}/{model}", tag = "ultralytics",
    params(("owner" = String, Path), ("project" = String, Path), ("model" = String, Path), RetrieveQuery),
    responses((status = 200, body = RetrievedModel), (status = 404, body = crate::api::error::ErrorBody), crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn retrieve(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Path((owner, project, model)): Path<(String, String, String)>,
    Query(q): Query<RetrieveQuery>,
) -> Result<Json<Value>, ApiError> {
    principal.require(Action::Read)?;
    let ns = own_workspace(&principal, &owner)?;
    let record = find(&api, ns, &project, &model)?;
    if matches!(q.analysis.as_deref(), Some("1" | "true")) {
        return Ok(Json(json!({ "analysis": null })));
    }
    let body = RetrievedModel { model: model_summary(&api, &record), is_owner: true };
    Ok(Json(serde_json::to_value(body).map_err(ApiError::internal)?))
}

/// Deletes a model, its training run and its exports (the weights stay in the bucket).
#[utoipa::path(delete, path = "/api/models/{owner}/{project}/{model}", tag = "ultralytics",
    params(("owner" = String, Path), ("project" = String, Path), ("model" = String, Path)),
    responses((status = 200, body = Success), (status = 404, body = crate::api::error::ErrorBody), crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn delete(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Path((owner, project, model)): Path<(String, String, String)>,
) -> Result<Json<Success>, ApiError> {
    principal.require(Action::Write)?;
    let ns = own_workspace(&principal, &owner)?.to_string();
    let record = find(&api, &ns, &project, &model)?;
    let tj = training_job_of(&api, &record);
    let name = record.name_any();
    api.cluster.delete_record(&ns, &name).await?;
    api.recent_records.deleted(&ns, &name, record.metadata.uid.clone());
    if let Some(tj) = tj {
        api.recent_jobs.deleted(&ns, &tj.name_any(), tj.metadata.uid.clone());
    }
    tracing::info!(namespace = %ns, project = %project, model = %model, key = %principal.key_id, "model deleted");
    Ok(Json(Success { success: true }))
}

/// `POST /api/training/start` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StartTraining {
    /// The model's id, from `POST /api/models`.
    pub model_id: String,
    /// Ultralytics training arguments: `model` (an architecture, `yolov8n` or `yolov8n.yaml`)
    /// and `data` (`ul://<owner>/datasets/<slug>`, or the slug) are required; `epochs`, `imgsz`,
    /// `batch`, `patience`, `lr0`, `lrf`, `optimizer`, `cos_lr`, `warmup_epochs`, `seed` and
    /// `amp` are honoured; `project`, `name`, `device`, `workers`, `exist_ok`, `plots`,
    /// `verbose`, `save` and `val` are accepted and have no effect; anything else is a 400.
    #[schema(value_type = Object)]
    pub train_args: Map<String, Value>,
    /// A GPU type name: any value but `cpu` trains on one GPU (`nvidia.com/gpu: 1`). Unset:
    /// CPU.
    pub gpu_type: Option<String>,
    /// Accepted; training reads the Dataset's current manifest.
    pub capture_dataset_version: Option<bool>,
}

/// `POST /api/training/start` response.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrainingStarted {
    /// The model id.
    pub model_id: String,
    /// Always `starting`.
    pub status: String,
    /// `cpu`, or the `gpuType` asked for.
    pub gpu_type: String,
    /// Always zero: a self-hosted platform bills nothing.
    #[schema(value_type = Object)]
    pub estimated_cost: Value,
    /// Always zero.
    #[schema(value_type = Object)]
    pub billing: Value,
}

/// Training arguments Ocellus honours.
const HONOURED: [&str; 13] = [
    "model",
    "data",
    "epochs",
    "imgsz",
    "batch",
    "patience",
    "lr0",
    "lrf",
    "optimizer",
    "cos_lr",
    "warmup_epochs",
    "seed",
    "amp",
];
/// Training arguments accepted with no effect (they name local runs or local hardware).
const IGNORED: [&str; 9] = ["project", "name", "device", "workers", "exist_ok", "plots", "verbose", "save", "val"];

fn arg_error(key: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(format!("trainArgs.{key}"), message)
}

fn int_arg(args: &Map<String, Value>, key: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_i64().filter(|n| (min..=max).contains(n)) {
            Some(n) => Ok(Some(n)),
            None => Err(arg_error(key, format!("must be a whole number from {min} to {max}, not {v}"))),
        },
    }
}

fn float_arg(args: &Map<String, Value>, key: &str, min: f64, max: f64) -> Result<Option<f64>, ApiError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64().filter(|n| (min..=max).contains(n)) {
            Some(n) => Ok(Some(n)),
            None => Err(arg_error(key, format!("must be a number from {min} to {max}, not {v}"))),
        },
    }
}

fn bool_arg(args: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(arg_error(key, format!("must be true or false, not {v}"))),
    }
}

/// The architecture `trainArgs.model` names (pure): `yolov8n`, `yolov8n.yaml`, `yolov8n-cls`, ….
pub fn architecture(model: &str) -> Result<String, ApiError> {
    if model.ends_with(".pt") || model.starts_with("ul://") {
        return Err(arg_error(
            "model",
            format!(
                "'{model}' names pretrained weights, which Ocellus does not fetch; name the architecture (e.g. 'yolov8n.yaml') to train from scratch"
            ),
        ));
    }
    let arch = model.strip_suffix(".yaml").unwrap_or(model);
    let scale = arch.strip_prefix("yolov8").and_then(|r| r.chars().next());
    let suffix = arch.get(7..).unwrap_or_default();
    let ok =
        matches!(scale, Some('n' | 's' | 'm' | 'l' | 'x')) && ["", "-cls", "-seg", "-pose", "-obb"].contains(&suffix);
    if ok {
        Ok(arch.to_string())
    } else {
        Err(arg_error(
            "model",
            format!(
                "'{model}' is not a supported architecture: yolov8[nsmlx] with -cls, -seg, -pose or -obb, as .yaml or bare"
            ),
        ))
    }
}

/// The Dataset slug `trainArgs.data` names in `ns` (pure): `ul://<ns>/datasets/<slug>` or `<slug>`.
pub fn dataset_slug(ns: &str, data: &str) -> Result<String, ApiError> {
    let slug = match data.strip_prefix("ul://") {
        Some(rest) => match rest.split('/').collect::<Vec<_>>()[..] {
            [owner, "datasets", slug] if owner == ns => slug.to_string(),
            [_, "datasets", _] => return Err(ApiError::NotFound(format!("dataset '{data}'"))),
            _ => return Err(arg_error("data", format!("'{data}' is not ul://<owner>/datasets/<slug>"))),
        },
        None => data.to_string(),
    };
    if crate::api::keys::is_namespace_name(&slug) {
        Ok(slug)
    } else {
        Err(arg_error("data", format!("'{data}' names no dataset: give ul://{ns}/datasets/<slug> or the slug")))
    }
}

/// The TrainingJob a `training/start` asks for (pure): validated, owned by the model's record,
/// reading `dataset`.
pub fn build_training_job(
    record: &ConfigMap,
    dataset: &Dataset,
    body: &StartTraining,
) -> Result<TrainingJob, ApiError> {
    let args = &body.train_args;
    if let Some(k) = args.keys().find(|k| !HONOURED.contains(&k.as_str()) && !IGNORED.contains(&k.as_str())) {
        return Err(arg_error(k, format!("is not supported; supported: {}", HONOURED.join(", "))));
    }
    let model = args.get("model").and_then(Value::as_str).ok_or_else(|| arg_error("model", "is required"))?;
    let arch = architecture(model)?;
    let task = task_of_architecture(&arch);
    if task != dataset.spec.task {
        return Err(arg_error(
            "model",
            format!(
                "{arch} trains {}, but dataset '{}' is a {} dataset",
                task.as_str(),
                dataset.name_any(),
                dataset.spec.task.as_str()
            ),
        ));
    }
    let mut h = Hyperparameters::default();
    if let Some(n) = int_arg(args, "epochs", 1, 10_000)? {
        h.epochs = n as i32;
    }
    if let Some(n) = int_arg(args, "imgsz", 32, 4096)? {
        if n % 32 != 0 {
            return Err(arg_error("imgsz", format!("must be a multiple of 32, not {n}")));
        }
        h.imgsz = n as i32;
    }
    if let Some(n) = int_arg(args, "batch", 1, 1024)? {
        h.batch = n as i32;
    }
    if let Some(n) = int_arg(args, "patience", 0, 10_000)? {
        h.patience = n as i32;
    }
    if let Some(n) = int_arg(args, "seed", 0, i64::from(u32::MAX))? {
        h.seed = n;
    }
    if let Some(x) = float_arg(args, "lr0", 1e-9, 1.0)? {
        h.lr0 = x;
    }
    if let Some(x) = float_arg(args, "lrf", 1e-9, 1.0)? {
        h.lrf = x;
    }
    if let Some(x) = float_arg(args, "warmup_epochs", 0.0, 1000.0)? {
        h.warmup_epochs = x;
    }
    if let Some(b) = bool_arg(args, "cos_lr")? {
        h.cos_lr = b;
    }
    if let Some(b) = bool_arg(args, "amp")? {
        h.amp = b;
    }
    match args.get("optimizer").and_then(Value::as_str) {
        None => {}
        Some("SGD") => h.optimizer = Optimizer::Sgd,
        Some("AdamW") => h.optimizer = Optimizer::AdamW,
        Some("auto") => h.optimizer = Optimizer::Auto,
        Some(o) => return Err(arg_error("optimizer", format!("'{o}' is not supported: SGD, AdamW or auto"))),
    }
    let (project, slug) = slugs_of(record);
    let id = record.name_any().trim_start_matches("ocellus-model-").to_string();
    let mut tj = TrainingJob::new(
        &training_job_name(&slug, &id),
        TrainingJobSpec {
            dataset_ref: DatasetRef { name: dataset.name_any(), version: None },
            model: ModelSpec { architecture: arch, from: None },
            hyperparameters: h,
            resources: Default::default(),
            scheduling: Default::default(),
            queue_name: None,
            suspend: false,
            backoff_limit: None,
            active_deadline_seconds: None,
            checkpoint: Default::default(),
        },
    );
    let gpu = body.gpu_type.as_deref().filter(|g| *g != "cpu");
    if gpu.is_some() {
        tj.spec.resources.gpu.count = 1;
    }
    tj.metadata.namespace = record.namespace();
    tj.metadata.labels = Some(BTreeMap::from([
        (MANAGED_BY.0.into(), MANAGED_BY.1.into()),
        (PROJECT.into(), project),
        (MODEL.into(), slug),
    ]));
    let mut ann = BTreeMap::from([(MODEL_ID.to_string(), id)]);
    if let Some(g) = gpu {
        ann.insert(GPU_TYPE.into(), g.into());
    }
    tj.metadata.annotations = Some(ann);
    tj.metadata.owner_references = Some(vec![owned_by(record)]);
    Ok(tj)
}

/// Starts training a model: its TrainingJob.
#[utoipa::path(post, path = "/api/training/start", tag = "ultralytics", request_body = StartTraining,
    responses((status = 200, body = TrainingStarted), (status = 400, body = crate::api::error::ErrorBody),
        (status = 404, body = crate::api::error::ErrorBody), (status = 409, body = crate::api::error::ErrorBody),
        crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn start_training(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    ApiJson(body): ApiJson<StartTraining>,
) -> Result<Json<TrainingStarted>, ApiError> {
    principal.require(Action::Write)?;
    let ns = principal.namespace.clone();
    let record = (body.model_id.len() == 12 && body.model_id.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| api.record(&ns, &record_name(&body.model_id)))
        .flatten()
        .filter(|r| is_model(r))
        .ok_or_else(|| ApiError::NotFound(format!("model '{}'", body.model_id)))?;
    let data = body.train_args.get("data").and_then(Value::as_str).ok_or_else(|| arg_error("data", "is required"))?;
    let slug = dataset_slug(&ns, data)?;
    let dataset = api.dataset(&ns, &slug).ok_or_else(|| ApiError::NotFound(format!("dataset '{slug}'")))?;
    let tj = build_training_job(&record, &dataset, &body)?;
    let name = tj.name_any();
    let created = api.cluster.create_training_job(tj).await.map_err(|e| match e {
        ApiError::Conflict(_) => ApiError::Conflict(format!(
            "model '{}' is already trained or training (TrainingJob '{name}'); delete its training to start again",
            body.model_id
        )),
        e => e,
    })?;
    api.recent_jobs.wrote(created);
    tracing::info!(namespace = %ns, model_id = %body.model_id, training_job = %name, key = %principal.key_id, "training started");
    Ok(Json(TrainingStarted {
        model_id: body.model_id,
        status: "starting".into(),
        gpu_type: body.gpu_type.filter(|g| g != "cpu").unwrap_or_else(|| "cpu".into()),
        estimated_cost: json!({"pricePerHour": 0.0, "gpuMemoryGb": 0}),
        billing: json!({"estimatedCostCents": 0, "estimatedCostDisplay": "$0.00", "balanceCents": 0}),
    }))
}

/// `GET …/training` response: `job` is `null` until training starts.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TrainingProgress {
    /// The training run.
    #[schema(value_type = Option<Object>)]
    pub job: Option<Value>,
}

/// A training run as `GET …/training` shows it (pure); `now` for the elapsed time.
pub fn training_view(tj: &TrainingJob, now: chrono::DateTime<Utc>) -> Value {
    let st = tj.status.clone().unwrap_or_default();
    let total = st.epochs.unwrap_or(tj.spec.hyperparameters.epochs).max(1);
    let current = st.epoch.unwrap_or(0);
    let ms = |t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time| t.0.as_millisecond();
    let started = st.job.start_time.as_ref().map(ms);
    let ended = st.job.completion_time.as_ref().map(ms);
    let elapsed = started.map(|s| (ended.unwrap_or(now.timestamp_millis()) - s).max(0)).unwrap_or(0);
    let per_epoch = (current > 0).then(|| elapsed / i64::from(current));
    let eta = per_epoch.filter(|_| ended.is_none()).map(|p| p * i64::from(total - current).max(0));
    let gpu = tj.annotations().get(GPU_TYPE).cloned();
    let created = tj.metadata.creation_timestamp.as_ref().map(rfc3339).unwrap_or_default();
    json!({
        "id": tj.name_any(),
        "status": status_of(Some(tj)),
        "progress": {
            "currentEpoch": current, "totalEpochs": total,
            "percentage": (f64::from(current) * 100.0 / f64::from(total)).min(100.0),
            "startedAt": st.job.start_time.as_ref().map(rfc3339),
            "completedAt": st.job.completion_time.as_ref().map(rfc3339),
        },
        "timing": {"elapsedMs": elapsed, "timePerEpochMs": per_epoch, "etaMs": eta},
        "compute": gpu.map(|g| json!({"gpuType": g, "gpuDisplayName": g, "gpuMemoryGb": null})),
        "trainArgs": train_args(tj),
        "epochMetrics": st.latest_metrics.as_ref().map(metric_map),
        "error": training_error(tj),
        "createdAt": created,
        "updatedAt": st.job.completion_time.as_ref().or(st.job.start_time.as_ref()).map(rfc3339).unwrap_or(created),
    })
}

/// A model's training progress.
#[utoipa::path(get, path = "/api/models/{owner}/{project}/{model}/training", tag = "ultralytics",
    params(("owner" = String, Path), ("project" = String, Path), ("model" = String, Path)),
    responses((status = 200, body = TrainingProgress), (status = 404, body = crate::api::error::ErrorBody), crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn training(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Path((owner, project, model)): Path<(String, String, String)>,
) -> Result<Json<TrainingProgress>, ApiError> {
    principal.require(Action::Read)?;
    let ns = own_workspace(&principal, &owner)?;
    let record = find(&api, ns, &project, &model)?;
    Ok(Json(TrainingProgress { job: training_job_of(&api, &record).map(|tj| training_view(&tj, Utc::now())) }))
}

/// Cancels (deletes) a model's training run and its exports.
#[utoipa::path(delete, path = "/api/models/{owner}/{project}/{model}/training", tag = "ultralytics",
    params(("owner" = String, Path), ("project" = String, Path), ("model" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = crate::api::error::ErrorBody), crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn cancel_training(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Path((owner, project, model)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    principal.require(Action::Write)?;
    let ns = own_workspace(&principal, &owner)?.to_string();
    let record = find(&api, &ns, &project, &model)?;
    let tj =
        training_job_of(&api, &record).ok_or_else(|| ApiError::NotFound(format!("training of '{project}/{model}'")))?;
    let name = tj.name_any();
    api.cluster.delete_training_job(&ns, &name).await?;
    api.recent_jobs.deleted(&ns, &name, tj.metadata.uid.clone());
    tracing::info!(namespace = %ns, training_job = %name, key = %principal.key_id, "training cancelled");
    let finished = matches!(status_of(Some(&tj)), "completed" | "failed");
    let mut out = json!({"success": true, "status": "cancelled"});
    if finished {
        out["warning"] = json!("the training had already ended; its run and exports were deleted");
    }
    Ok(Json(out))
}

/// One downloadable file.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelFile {
    /// File name, e.g. `best.safetensors`.
    pub name: String,
    /// Bytes, when the object exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// A presigned `GET` URL (12 hours).
    pub download_url: String,
}

/// `GET …/files` response.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelFiles {
    /// The `best` checkpoint, then `last` (Ocellus' safetensors checkpoints, not Ultralytics
    /// `.pt` pickles).
    pub files: Vec<ModelFile>,
}

/// A presigned download of `uri` (`s3://bucket/key`) named `name`.
async fn download(api: &UltralyticsApi, uri: &str, name: String) -> Result<ModelFile, ApiError> {
    let uploads = api
        .uploads
        .as_ref()
        .ok_or_else(|| ApiError::NotImplemented { what: "downloads without object storage configured".into() })?;
    let (size, download_url) = uploads.presign_download(uri).await?;
    Ok(ModelFile { name, size, download_url })
}

/// A model's weights.
#[utoipa::path(get, path = "/api/models/{owner}/{project}/{model}/files", tag = "ultralytics",
    params(("owner" = String, Path), ("project" = String, Path), ("model" = String, Path)),
    responses((status = 200, body = ModelFiles), (status = 404, body = crate::api::error::ErrorBody), crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn files(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Path((owner, project, model)): Path<(String, String, String)>,
) -> Result<Json<ModelFiles>, ApiError> {
    principal.require(Action::Read)?;
    let ns = own_workspace(&principal, &owner)?;
    let record = find(&api, ns, &project, &model)?;
    let ck = training_job_of(&api, &record).and_then(|t| t.status.clone()).and_then(|s| s.checkpoints);
    let mut files = vec![];
    for (kind, uri) in [("best", ck.as_ref().and_then(|c| c.best.clone())), ("last", ck.and_then(|c| c.last))] {
        if let Some(uri) = uri {
            let name = uri.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or(kind).to_string();
            files.push(download(&api, &uri, name).await?);
        }
    }
    Ok(Json(ModelFiles { files }))
}

/// `exp_` and the Export's uid without dashes.
pub fn export_id(e: &Export) -> String {
    format!("exp_{}", e.metadata.uid.as_deref().unwrap_or_default().replace('-', ""))
}

/// The platform status of an Export (pure).
pub fn export_status(e: &Export) -> &'static str {
    let Some(st) = &e.status else { return "queued" };
    if st.common.observed_generation < e.metadata.generation {
        return "queued";
    }
    match st.phase {
        ExportPhase::Pending => "queued",
        ExportPhase::Running => "running",
        ExportPhase::Succeeded => "completed",
        ExportPhase::Failed => "failed",
    }
}

/// File name of an export: the model's slug and the format's extension.
fn export_filename(e: &Export) -> String {
    let model = e.labels().get(MODEL).cloned().unwrap_or_else(|| e.name_any());
    let ext = match e.spec.format {
        ExportFormat::Onnx => "onnx",
        ExportFormat::Torchscript => "torchscript",
        ExportFormat::Engine => "engine",
    };
    format!("{model}.{ext}")
}

/// An export as lists and `retrieve` show it; `file.downloadUrl` is added by the handler.
pub fn export_item(e: &Export) -> Value {
    let st = e.status.clone().unwrap_or_default();
    let failed = (st.phase == ExportPhase::Failed).then(|| {
        let f = st.job.failure.clone().unwrap_or_default();
        let cond = st.common.conditions.iter().find(|c| c.type_ == "Failed" || c.type_ == "Ready");
        json!({
            "message": f.message.or_else(|| cond.and_then(|c| c.message.clone())).unwrap_or_else(|| "export failed".into()),
            "timestamp": st.job.completion_time.as_ref().map(rfc3339),
        })
    });
    let created = e.metadata.creation_timestamp.as_ref().map(rfc3339).unwrap_or_default();
    json!({
        "id": export_id(e),
        "status": export_status(e),
        "format": e.spec.format.as_str(),
        "args": {"imgsz": e.spec.imgsz, "half": e.spec.half, "dynamic": e.spec.dynamic, "batch": e.spec.batch},
        "file": st.artifact.as_ref().map(|a| json!({"size": a.size_bytes, "sha256": a.sha256, "downloadFilename": export_filename(e)})),
        "error": failed,
        "startedAt": st.job.start_time.as_ref().map(rfc3339),
        "completedAt": st.job.completion_time.as_ref().map(rfc3339),
        "createdAt": created,
        "updatedAt": st.job.completion_time.as_ref().or(st.job.start_time.as_ref()).map(rfc3339).unwrap_or(created),
    })
}

/// [`export_item`] with a presigned `file.downloadUrl` once the artifact exists.
async fn export_view(api: &UltralyticsApi, e: &Export) -> Result<Value, ApiError> {
    let mut item = export_item(e);
    if let Some(a) = e.status.as_ref().and_then(|s| s.artifact.as_ref()) {
        let f = download(api, &a.uri, export_filename(e)).await?;
        item["file"]["downloadUrl"] = json!(f.download_url);
    }
    Ok(item)
}

/// `POST …/exports` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateExport {
    /// `onnx`, `torchscript` or `engine`.
    pub format: String,
    /// Accepted: an `engine` needs a GPU product, which a platform GPU type does not name.
    pub gpu_type: Option<String>,
    /// `imgsz`, `half`, `dynamic`, `batch` and `opset`, as Ultralytics names them.
    #[schema(value_type = Option<Object>)]
    pub args: Option<Map<String, Value>>,
}

/// The Export a create request asks for (pure): of `tj`'s `best` weights, owned by it; `n`
/// makes the name unique.
pub fn build_export(tj: &TrainingJob, body: &CreateExport, n: &str) -> Result<Export, ApiError> {
    let format = match body.format.as_str() {
        "onnx" => ExportFormat::Onnx,
        "torchscript" => ExportFormat::Torchscript,
        "engine" => {
            return Err(ApiError::bad_request(
                "format",
                "'engine' needs the GPU model to build on; create an Export resource with spec.gpuProduct",
            ));
        }
        f => {
            return Err(ApiError::bad_request(
                "format",
                format!("'{f}' is not supported: {}", ExportFormat::SUPPORTED.join(", ")),
            ));
        }
    };
    let empty = Map::new();
    let args = body.args.as_ref().unwrap_or(&empty);
    if let Some(k) = args.keys().find(|k| !["imgsz", "half", "dynamic", "batch", "opset"].contains(&k.as_str())) {
        return Err(ApiError::bad_request(
            format!("args.{k}"),
            "is not supported; supported: imgsz, half, dynamic, batch, opset",
        ));
    }
    let imgsz = int_arg(args, "imgsz", 32, 4096)?;
    if imgsz.is_some_and(|s| s % 32 != 0) {
        return Err(ApiError::bad_request("args.imgsz", "must be a multiple of 32"));
    }
    let half = bool_arg(args, "half")?.unwrap_or(false);
    if half && format == ExportFormat::Torchscript {
        return Err(ApiError::bad_request("args.half", "half TorchScript needs a GPU; export ONNX for half precision"));
    }
    let model = tj.labels().get(MODEL).cloned().unwrap_or_default();
    let mut e = Export::new(
        &format!("{}-{}-{n}", tj.name_any(), format.as_str()),
        ExportSpec {
            source: ExportSource {
                training_job: Some(TrainingJobCheckpointRef { name: tj.name_any(), checkpoint: CheckpointKind::Best }),
                weights_uri: None,
            },
            format,
            imgsz: imgsz.map(|s| s as i32),
            half,
            int8: false,
            calibration: None,
            max_accuracy_drop: None,
            dynamic: bool_arg(args, "dynamic")?.unwrap_or(false),
            batch: int_arg(args, "batch", 1, 256)?.unwrap_or(1) as i32,
            opset: int_arg(args, "opset", 13, 21)?.map(|o| o as i32),
            gpu_product: None,
            scheduling: Default::default(),
        },
    );
    e.metadata.namespace = tj.namespace();
    let mut labels = tj.labels().clone();
    labels.insert(MODEL.into(), model);
    e.metadata.labels = Some(labels);
    e.metadata.annotations =
        Some(tj.annotations().iter().filter(|(k, _)| *k == MODEL_ID).map(|(k, v)| (k.clone(), v.clone())).collect());
    e.metadata.owner_references = Some(vec![owned_by(tj)]);
    Ok(e)
}

pub fn exports_of(api: &UltralyticsApi, tj: &TrainingJob) -> Vec<Arc<Export>> {
    let uid = tj.metadata.uid.clone().unwrap_or_default();
    let mut all: Vec<Arc<Export>> = api
        .exports_in(&tj.namespace().unwrap_or_default())
        .into_iter()
        .filter(|e| e.owner_references().iter().any(|r| r.uid == uid))
        .collect();
    all.sort_by(|a, b| {
        let t = |e: &Export| e.metadata.creation_timestamp.as_ref().map(|t| t.0);
        t(b).cmp(&t(a)).then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    all
}

fn trained(api: &UltralyticsApi, ns: &str, project: &str, model: &str) -> Result<Arc<TrainingJob>, ApiError> {
    let record = find(api, ns, project, model)?;
    training_job_of(api, &record).ok_or_else(|| ApiError::NotFound(format!("training of '{project}/{model}'")))
}

/// Exports a model's best weights.
#[utoipa::path(post, path = "/api/models/{owner}/{project}/{model}/exports", tag = "ultralytics",
    params(("owner" = String, Path), ("project" = String, Path), ("model" = String, Path)), request_body = CreateExport,
    responses((status = 201, body = Object), (status = 400, body = crate::api::error::ErrorBody),
        (status = 404, body = crate::api::error::ErrorBody), crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn create_export(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Path((owner, project, model)): Path<(String, String, String)>,
    ApiJson(body): ApiJson<CreateExport>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    principal.require(Action::Write)?;
    let ns = own_workspace(&principal, &owner)?.to_string();
    let tj = trained(&api, &ns, &project, &model)?;
    let mut n = [0u8; 4];
    getrandom::fill(&mut n).map_err(|e| ApiError::internal(e.to_string()))?;
    let e = build_export(&tj, &body, &hex::encode(n))?;
    let created = api.cluster.create_export(e).await?;
    let id = export_id(&created);
    let format = created.spec.format.as_str();
    tracing::info!(namespace = %ns, export = %created.name_any(), key = %principal.key_id, "export created");
    let out = json!({"id": id, "format": format, "status": "queued", "gpuType": body.gpu_type, "region": REGION});
    api.recent_exports.wrote(created);
    Ok((StatusCode::CREATED, Json(out)))
}

/// A model's exports.
#[utoipa::path(get, path = "/api/models/{owner}/{project}/{model}/exports", tag = "ultralytics",
    params(("owner" = String, Path), ("project" = String, Path), ("model" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = crate::api::error::ErrorBody), crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn list_exports(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Path((owner, project, model)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    principal.require(Action::Read)?;
    let ns = own_workspace(&principal, &owner)?;
    let record = find(&api, ns, &project, &model)?;
    let mut items = vec![];
    if let Some(tj) = training_job_of(&api, &record) {
        for e in exports_of(&api, &tj) {
            items.push(export_view(&api, &e).await?);
        }
    }
    Ok(Json(json!({"exports": items, "region": REGION})))
}

fn find_export(api: &UltralyticsApi, ns: &str, project: &str, model: &str, id: &str) -> Result<Arc<Export>, ApiError> {
    let tj = trained(api, ns, project, model)?;
    exports_of(api, &tj)
        .into_iter()
        .find(|e| export_id(e) == id)
        .ok_or_else(|| ApiError::NotFound(format!("export '{id}'")))
}

/// One export; `file.downloadUrl` once it completed.
#[utoipa::path(get, path = "/api/models/{owner}/{project}/{model}/exports/{export}", tag = "ultralytics",
    params(("owner" = String, Path), ("project" = String, Path), ("model" = String, Path), ("export" = String, Path, description = "`exp_` id")),
    responses((status = 200, body = Object), (status = 404, body = crate::api::error::ErrorBody), crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn retrieve_export(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Path((owner, project, model, export)): Path<(String, String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    principal.require(Action::Read)?;
    let ns = own_workspace(&principal, &owner)?;
    let e = find_export(&api, ns, &project, &model, &export)?;
    Ok(Json(json!({"export": export_view(&api, &e).await?})))
}

/// Deletes an export (cancels it when it is still running).
#[utoipa::path(delete, path = "/api/models/{owner}/{project}/{model}/exports/{export}", tag = "ultralytics",
    params(("owner" = String, Path), ("project" = String, Path), ("model" = String, Path), ("export" = String, Path, description = "`exp_` id")),
    responses((status = 200, body = Object), (status = 404, body = crate::api::error::ErrorBody), crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn delete_export(
    State(api): State<UltralyticsApi>,
    principal: Principal,
    Path((owner, project, model, export)): Path<(String, String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    principal.require(Action::Write)?;
    let ns = own_workspace(&principal, &owner)?.to_string();
    let e = find_export(&api, &ns, &project, &model, &export)?;
    let running = matches!(export_status(&e), "queued" | "running");
    api.cluster.delete_export(&ns, &e.name_any()).await?;
    api.recent_exports.deleted(&ns, &e.name_any(), e.metadata.uid.clone());
    tracing::info!(namespace = %ns, export = %e.name_any(), key = %principal.key_id, "export deleted");
    Ok(Json(json!({"success": true, "action": if running { "cancelled" } else { "deleted" }})))
}

//! The Ultralytics Platform REST API (`/api/...`), as the official `ultralytics-platform` SDK
//! and the reference call it, mapped onto Ocellus resources. A workspace (`owner`) is the API
//! key's namespace; any other owner is answered 404, as if it did not exist.
//!
//! Served so far (the rest of the surface is planned, issue #13):
//! - `GET /api/account/summary`: the workspace, so that clients can infer their `owner`;
//! - datasets ([`datasets`]): list, create, retrieve, delete and ingest, a `Dataset` each;
//! - uploads ([`upload`]): presigned `PUT` URLs into the platform bucket, then `ingest`;
//! - projects ([`projects`]) and models ([`models`]): records (ConfigMaps) in the namespace;
//!   `training/start` creates a model's `TrainingJob`, model exports are `Export`s of it;
//! - deployments ([`deployments`]): the workspace's ModelDeployments, and predictions through
//!   the gateway.
//!
//! Reads come from reflector caches, overlaid with this replica's own recent writes
//! ([`Recent`]), so that a client reads what it just wrote. Writes go through [`Cluster`]: the
//! Kubernetes API in the binary, memory in unit tests.

pub mod cluster;
pub mod compat;
pub mod datasets;
pub mod deployments;
pub mod models;
pub mod projects;
pub mod rendered;
pub mod upload;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use ocellus_crds::{Dataset, Export, ModelDeployment, TrainingJob};
use serde::Serialize;
use tokio::task::JoinHandle;

pub use cluster::{Cluster, KubeCluster, MemoryCluster, Recent};

use crate::api::{Action, ApiError, ApiState, Flavor, Principal};

/// The `region` every response names: Ocellus runs where it is installed.
pub const REGION: &str = "us";

/// What the Ultralytics routes need. Cheap to clone.
#[derive(Clone, Debug)]
pub struct UltralyticsApi {
    /// Datasets of every namespace, from the watch.
    pub datasets: Store<Dataset>,
    /// ModelDeployments of every namespace, from the watch.
    pub deployments: Store<ModelDeployment>,
    /// Project and model records (ConfigMaps labelled `ocellus.dev/record`), from the watch.
    pub records: Store<ConfigMap>,
    /// TrainingJobs of every namespace, from the watch.
    pub training_jobs: Store<TrainingJob>,
    /// Exports of every namespace, from the watch.
    pub exports: Store<Export>,
    /// The cluster's Nodes, from the watch: their GPU products are what deployments and
    /// trainings can ask for (Roboflow's machine types).
    pub nodes: Store<Node>,
    /// The serving gateway's routes, which predictions are handed to; `None`: predictions 501.
    pub gateway: Option<Router>,
    /// This replica's recent Dataset writes, read over the cache.
    pub recent: Arc<Recent<Dataset>>,
    /// Dataset list items, rendered once per Dataset version.
    pub dataset_items: Arc<rendered::Rendered<Dataset>>,
    /// This replica's recent record writes.
    pub recent_records: Arc<Recent<ConfigMap>>,
    /// This replica's recent TrainingJob writes.
    pub recent_jobs: Arc<Recent<TrainingJob>>,
    /// This replica's recent Export writes.
    pub recent_exports: Arc<Recent<Export>>,
    /// This replica's recent ModelDeployment writes.
    pub recent_deployments: Arc<Recent<ModelDeployment>>,
    /// Writes Datasets.
    pub cluster: Arc<dyn Cluster>,
    /// Presigns uploads; `None` when no object storage is configured.
    pub uploads: Option<upload::Uploads>,
    /// The platform bucket: `sourceUrl`s in it must stay under the caller's namespace.
    pub platform_bucket: Option<String>,
    /// Set once every watch has listed.
    pub synced: Arc<AtomicBool>,
}

impl UltralyticsApi {
    /// Whether the cache has listed: before, lists would be empty rather than wrong-but-empty.
    pub fn is_ready(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// The routes, behind `api`'s authentication and rate limits.
    pub fn router(&self, api: &ApiState) -> Router {
        let routes = Router::new()
            .route("/api/account/summary", get(account_summary).fallback(compat::fallback))
            .route("/api/{*rest}", axum::routing::any(compat::fallback))
            .merge(datasets::routes())
            .merge(deployments::routes())
            .merge(projects::routes())
            .merge(models::routes())
            .merge(upload::routes())
            .with_state(self.clone());
        api.protect(routes, Flavor::Ultralytics)
    }

    /// The routes' state over a [`MemoryCluster`] (for tests without a cluster), synced, with
    /// `gateway` for predictions and `platform_bucket` for upload checks.
    pub fn in_memory(cluster: &Arc<MemoryCluster>, gateway: Option<Router>, platform_bucket: Option<String>) -> Self {
        UltralyticsApi {
            datasets: cluster.store(),
            deployments: cluster.deployment_store(),
            records: cluster.record_store(),
            training_jobs: cluster.training_job_store(),
            exports: cluster.export_store(),
            nodes: cluster.node_store(),
            gateway,
            recent: Arc::default(),
            dataset_items: Arc::default(),
            recent_records: Arc::default(),
            recent_jobs: Arc::default(),
            recent_exports: Arc::default(),
            recent_deployments: Arc::default(),
            cluster: cluster.clone(),
            uploads: None,
            platform_bucket,
            synced: Arc::new(AtomicBool::new(true)),
        }
    }

    /// A Dataset as this replica last saw it: its own write when the cache is older.
    pub fn dataset(&self, namespace: &str, name: &str) -> Option<Arc<Dataset>> {
        let cached = self.datasets.get(&reflector::ObjectRef::new(name).within(namespace));
        self.recent.resolve(namespace, name, cached)
    }

    /// A project or model record as this replica last saw it.
    pub fn record(&self, namespace: &str, name: &str) -> Option<Arc<ConfigMap>> {
        let cached = self.records.get(&reflector::ObjectRef::new(name).within(namespace));
        self.recent_records.resolve(namespace, name, cached)
    }

    /// The project and model records of `namespace`, with this replica's recent writes.
    pub fn records_in(&self, namespace: &str) -> Vec<Arc<ConfigMap>> {
        let cached = self.records.state().into_iter().filter(|c| c.metadata.namespace.as_deref() == Some(namespace));
        self.recent_records.merge(namespace, cached.collect())
    }

    /// A TrainingJob as this replica last saw it.
    pub fn training_job(&self, namespace: &str, name: &str) -> Option<Arc<TrainingJob>> {
        let cached = self.training_jobs.get(&reflector::ObjectRef::new(name).within(namespace));
        self.recent_jobs.resolve(namespace, name, cached)
    }

    /// The Exports of `namespace`, with this replica's recent writes.
    pub fn exports_in(&self, namespace: &str) -> Vec<Arc<Export>> {
        let cached = self.exports.state().into_iter().filter(|e| e.metadata.namespace.as_deref() == Some(namespace));
        self.recent_exports.merge(namespace, cached.collect())
    }

    /// The ModelDeployments of `namespace`, with this replica's recent writes.
    pub fn deployments_in(&self, namespace: &str) -> Vec<Arc<ModelDeployment>> {
        let cached =
            self.deployments.state().into_iter().filter(|d| d.metadata.namespace.as_deref() == Some(namespace));
        self.recent_deployments.merge(namespace, cached.collect())
    }

    /// The Datasets of `namespace`, with this replica's recent writes.
    pub fn datasets_in(&self, namespace: &str) -> Vec<Arc<Dataset>> {
        let cached = self.datasets.state().into_iter().filter(|d| d.metadata.namespace.as_deref() == Some(namespace));
        self.recent.merge(namespace, cached.collect())
    }
}

/// Starts the watches (all namespaces) of Datasets, ModelDeployments, TrainingJobs, Exports,
/// Nodes and the project and model records, and returns the routes' state; `gateway` is the serving
/// gateway's router, for predictions.
pub fn start(
    client: kube::Client,
    uploads: Option<upload::Uploads>,
    platform_bucket: Option<String>,
    gateway: Option<Router>,
) -> (UltralyticsApi, Vec<JoinHandle<()>>) {
    let synced = Arc::new(AtomicBool::new(false));
    let listed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (datasets, dw) = reflector::store::<Dataset>();
    let (deployments, mw) = reflector::store::<ModelDeployment>();
    let (records, rw) = reflector::store::<ConfigMap>();
    let (training_jobs, tw) = reflector::store::<TrainingJob>();
    let (exports, ew) = reflector::store::<Export>();
    let (nodes, nw) = reflector::store::<Node>();
    let all = watcher::Config::default();
    let tasks = vec![
        watch("Dataset", kube::Api::all(client.clone()), all.clone(), dw, listed.clone(), synced.clone()),
        watch("ModelDeployment", kube::Api::all(client.clone()), all.clone(), mw, listed.clone(), synced.clone()),
        watch("TrainingJob", kube::Api::all(client.clone()), all.clone(), tw, listed.clone(), synced.clone()),
        watch("Export", kube::Api::all(client.clone()), all.clone(), ew, listed.clone(), synced.clone()),
        watch("Node", kube::Api::all(client.clone()), all, nw, listed.clone(), synced.clone()),
        // Only the records: the apiserver never reads other ConfigMaps.
        watch(
            "ConfigMap",
            kube::Api::all(client.clone()),
            watcher::Config::default().labels(projects::RECORD),
            rw,
            listed,
            synced.clone(),
        ),
    ];
    let state = UltralyticsApi {
        datasets,
        deployments,
        records,
        training_jobs,
        exports,
        nodes,
        gateway,
        recent: Arc::default(),
        dataset_items: Arc::default(),
        recent_records: Arc::default(),
        recent_jobs: Arc::default(),
        recent_exports: Arc::default(),
        recent_deployments: Arc::default(),
        cluster: Arc::new(KubeCluster::new(client)),
        uploads,
        platform_bucket,
        synced,
    };
    (state, tasks)
}

/// How many watches [`start`] runs: the routes are ready once all have listed.
const WATCHES: usize = 6;

/// One reflector; `synced` is set once all [`WATCHES`] have listed.
fn watch<K>(
    kind: &'static str,
    api: kube::Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    listed: Arc<std::sync::atomic::AtomicUsize>,
    synced: Arc<AtomicBool>,
) -> JoinHandle<()>
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let stream = watcher(api, config).default_backoff().reflect(writer);
    tokio::spawn(async move {
        let mut first = true;
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::InitDone) if first => {
                    first = false;
                    if listed.fetch_add(1, Ordering::AcqRel) + 1 == WATCHES {
                        synced.store(true, Ordering::Release);
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, kind, "watch failed; retrying"),
            }
        }
    })
}

/// The path's `owner` must be the key's namespace; any other is not found.
pub fn own_workspace<'a>(principal: &'a Principal, owner: &str) -> Result<&'a str, ApiError> {
    if owner == principal.namespace {
        Ok(&principal.namespace)
    } else {
        Err(ApiError::NotFound(format!("workspace '{owner}'")))
    }
}

/// RFC 3339 with milliseconds and `Z`, as the platform writes times.
pub fn rfc3339(t: &Time) -> String {
    let dt: DateTime<Utc> =
        DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond() as u32).unwrap_or_default();
    dt.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `GET /api/account/summary` response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountSummary {
    /// The workspace: the key's namespace (clients use it as `owner`).
    pub username: String,
    /// Display name: the namespace.
    pub name: String,
    /// Always `team`: a namespace is shared.
    pub account_type: String,
    /// Always `enterprise`: self-hosted, no plan limits.
    pub plan: String,
    /// Always 0: no billing.
    pub credits_cents: i64,
    /// What the workspace holds.
    pub counts: AccountCounts,
    /// Always empty.
    pub teams: Vec<serde_json::Value>,
}

/// Resource counts of a workspace.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountCounts {
    /// Projects.
    pub projects: usize,
    /// Datasets.
    pub datasets: usize,
    /// Models.
    pub models: usize,
}

/// The caller's workspace.
#[utoipa::path(get, path = "/api/account/summary", tag = "ultralytics",
    responses((status = 200, body = AccountSummary), crate::api::keys_router::CommonErrors),
    security(("bearer" = [])))]
pub async fn account_summary(
    State(api): State<UltralyticsApi>,
    principal: Principal,
) -> Result<Json<AccountSummary>, ApiError> {
    principal.require(Action::Read)?;
    let ns = principal.namespace.clone();
    let records = api.records_in(&ns);
    fn kind(r: &ConfigMap) -> Option<&str> {
        r.metadata.labels.as_ref()?.get(projects::RECORD).map(String::as_str)
    }
    Ok(Json(AccountSummary {
        username: ns.clone(),
        name: ns.clone(),
        account_type: "team".into(),
        plan: "enterprise".into(),
        credits_cents: 0,
        counts: AccountCounts {
            projects: records.iter().filter(|r| kind(r) == Some("project")).count(),
            datasets: api.datasets_in(&ns).len(),
            models: records.iter().filter(|r| kind(r) == Some("model")).count(),
        },
        teams: vec![],
    }))
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_models;

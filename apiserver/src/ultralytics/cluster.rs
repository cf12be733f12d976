//! The Kubernetes writes of the Ultralytics routes ([`Cluster`]), and [`Recent`]: this
//! replica's own writes, read over the watch cache until the watch has caught up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use ocellus_crds::{Dataset, DatasetSource};

use crate::api::ApiError;
use crate::api::keys::FIELD_MANAGER;

/// How long a write of this replica overrides an older cached object.
const RECENT_FOR: Duration = Duration::from_secs(60);

/// Creates, changes and deletes Datasets.
pub trait Cluster: Send + Sync + std::fmt::Debug {
    /// Creates `dataset` (its namespace set); 409 when the name is taken.
    fn create_dataset(&self, dataset: Dataset) -> BoxFuture<'_, Result<Dataset, ApiError>>;
    /// Replaces `spec.source` of a Dataset (a new generation: the operator ingests it).
    fn set_dataset_source<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        source: DatasetSource,
    ) -> BoxFuture<'a, Result<Dataset, ApiError>>;
    /// Deletes a Dataset (its Jobs go with it by owner reference).
    fn delete_dataset<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), ApiError>>;
}

/// [`Cluster`] on the Kubernetes API, as field manager `ocellus-apiserver`.
#[derive(Clone)]
pub struct KubeCluster {
    client: kube::Client,
}

impl std::fmt::Debug for KubeCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeCluster")
    }
}

impl KubeCluster {
    /// Writes through `client`.
    pub fn new(client: kube::Client) -> KubeCluster {
        KubeCluster { client }
    }
}

fn not_found_as(e: kube::Error, what: String) -> ApiError {
    match &e {
        kube::Error::Api(s) if s.code == 404 => ApiError::NotFound(what),
        _ => ApiError::from(e),
    }
}

impl Cluster for KubeCluster {
    fn create_dataset(&self, dataset: Dataset) -> BoxFuture<'_, Result<Dataset, ApiError>> {
        Box::pin(async move {
            let ns = dataset.metadata.namespace.clone().unwrap_or_default();
            let name = dataset.metadata.name.clone().unwrap_or_default();
            let api = Api::<Dataset>::namespaced(self.client.clone(), &ns);
            let pp = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
            api.create(&pp, &dataset).await.map_err(|e| match &e {
                kube::Error::Api(s) if s.code == 409 => ApiError::Conflict(format!("dataset '{name}' already exists")),
                _ => ApiError::from(e),
            })
        })
    }

    fn set_dataset_source<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        source: DatasetSource,
    ) -> BoxFuture<'a, Result<Dataset, ApiError>> {
        Box::pin(async move {
            let api = Api::<Dataset>::namespaced(self.client.clone(), namespace);
            // A merge patch that names all three fields replaces the source whole.
            let patch = serde_json::json!({"spec": {"source": {
                "s3": source.s3, "https": source.https, "upload": source.upload,
            }}});
            let pp = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
            api.patch(name, &pp, &Patch::Merge(&patch)).await.map_err(|e| not_found_as(e, format!("dataset '{name}'")))
        })
    }

    fn delete_dataset<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            let api = Api::<Dataset>::namespaced(self.client.clone(), namespace);
            api.delete(name, &DeleteParams::background())
                .await
                .map(|_| ())
                .map_err(|e| not_found_as(e, format!("dataset '{name}'")))
        })
    }
}

/// [`Cluster`] in memory, feeding a reflector store as a watch would: for tests without a
/// cluster. [`MemoryCluster::set_status`] plays the operator.
pub struct MemoryCluster {
    writer: Mutex<reflector::store::Writer<Dataset>>,
    store: Store<Dataset>,
    md_writer: Mutex<reflector::store::Writer<ocellus_crds::ModelDeployment>>,
    md_store: Store<ocellus_crds::ModelDeployment>,
    next_uid: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for MemoryCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryCluster")
    }
}

impl Default for MemoryCluster {
    fn default() -> Self {
        let (store, mut writer) = reflector::store::<Dataset>();
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let (md_store, mut md_writer) = reflector::store::<ocellus_crds::ModelDeployment>();
        md_writer.apply_watcher_event(&watcher::Event::InitDone);
        MemoryCluster {
            writer: Mutex::new(writer),
            store,
            md_writer: Mutex::new(md_writer),
            md_store,
            next_uid: std::sync::atomic::AtomicU64::new(1),
        }
    }
}

impl MemoryCluster {
    /// The store this cluster feeds.
    pub fn store(&self) -> Store<Dataset> {
        self.store.clone()
    }

    /// The ModelDeployment store this cluster feeds.
    pub fn deployment_store(&self) -> Store<ocellus_crds::ModelDeployment> {
        self.md_store.clone()
    }

    /// Adds or replaces a ModelDeployment, as if applied and reconciled.
    pub fn put_deployment(&self, md: ocellus_crds::ModelDeployment) {
        self.md_writer.lock().expect("writer").apply_watcher_event(&watcher::Event::Apply(md));
    }

    fn get(&self, namespace: &str, name: &str) -> Option<Dataset> {
        self.store.get(&reflector::ObjectRef::new(name).within(namespace)).map(|d| (*d).clone())
    }

    fn put(&self, d: &Dataset) {
        self.writer.lock().expect("writer").apply_watcher_event(&watcher::Event::Apply(d.clone()));
    }

    /// Replaces the status of a Dataset, as the operator would.
    pub fn set_status(&self, namespace: &str, name: &str, status: ocellus_crds::DatasetStatus) {
        if let Some(mut d) = self.get(namespace, name) {
            d.status = Some(status);
            self.put(&d);
        }
    }
}

impl Cluster for MemoryCluster {
    fn create_dataset(&self, mut dataset: Dataset) -> BoxFuture<'_, Result<Dataset, ApiError>> {
        Box::pin(async move {
            let ns = dataset.metadata.namespace.clone().unwrap_or_default();
            let name = dataset.metadata.name.clone().unwrap_or_default();
            if self.get(&ns, &name).is_some() {
                return Err(ApiError::Conflict(format!("dataset '{name}' already exists")));
            }
            let n = self.next_uid.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let uid = format!("00000000-0000-4000-8000-{n:012x}");
            dataset.metadata.uid = Some(uid);
            dataset.metadata.generation = Some(1);
            dataset.metadata.creation_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
            self.put(&dataset);
            Ok(dataset)
        })
    }

    fn set_dataset_source<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        source: DatasetSource,
    ) -> BoxFuture<'a, Result<Dataset, ApiError>> {
        Box::pin(async move {
            let mut d = self.get(namespace, name).ok_or_else(|| ApiError::NotFound(format!("dataset '{name}'")))?;
            d.spec.source = source;
            d.metadata.generation = Some(d.metadata.generation.unwrap_or(1) + 1);
            self.put(&d);
            Ok(d)
        })
    }

    fn delete_dataset<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            let d = self.get(namespace, name).ok_or_else(|| ApiError::NotFound(format!("dataset '{name}'")))?;
            self.writer.lock().expect("writer").apply_watcher_event(&watcher::Event::Delete(d));
            Ok(())
        })
    }
}

/// A write of this replica: the object it returned, or the uid it deleted.
#[derive(Debug, Clone)]
enum Written {
    Object(Arc<Dataset>),
    Deleted(Option<String>),
}

/// This replica's recent Dataset writes by namespace and name, kept [`RECENT_FOR`]: a client
/// that created or changed a Dataset reads it back at once, though the watch is a moment late.
#[derive(Debug, Default)]
pub struct Recent {
    writes: Mutex<HashMap<(String, String), (Instant, Written)>>,
}

impl Recent {
    /// Records a created or changed Dataset.
    pub fn wrote(&self, d: Dataset) {
        let key = (d.metadata.namespace.clone().unwrap_or_default(), d.metadata.name.clone().unwrap_or_default());
        self.insert(key, Written::Object(Arc::new(d)));
    }

    /// Records a deletion of the Dataset with `uid`.
    pub fn deleted(&self, namespace: &str, name: &str, uid: Option<String>) {
        self.insert((namespace.into(), name.into()), Written::Deleted(uid));
    }

    fn insert(&self, key: (String, String), w: Written) {
        let mut writes = self.writes.lock().expect("recent");
        let now = Instant::now();
        writes.retain(|_, (t, _)| now.duration_since(*t) < RECENT_FOR);
        writes.insert(key, (now, w));
    }

    fn fresh(&self, namespace: &str, name: &str) -> Option<Written> {
        let writes = self.writes.lock().expect("recent");
        let (t, w) = writes.get(&(namespace.to_string(), name.to_string()))?;
        (t.elapsed() < RECENT_FOR).then(|| w.clone())
    }

    /// The newer of the cached object and this replica's write.
    pub fn resolve(&self, namespace: &str, name: &str, cached: Option<Arc<Dataset>>) -> Option<Arc<Dataset>> {
        match self.fresh(namespace, name) {
            None => cached,
            Some(Written::Deleted(uid)) => cached.filter(|c| c.metadata.uid != uid),
            Some(Written::Object(mine)) => match cached {
                Some(c) if c.metadata.uid == mine.metadata.uid && c.metadata.generation >= mine.metadata.generation => {
                    Some(c)
                }
                _ => Some(mine),
            },
        }
    }

    /// `cached` (one namespace's objects) with this replica's writes applied.
    pub fn merge(&self, namespace: &str, cached: Vec<Arc<Dataset>>) -> Vec<Arc<Dataset>> {
        let mut by_name: std::collections::BTreeMap<String, Option<Arc<Dataset>>> =
            cached.into_iter().map(|d| (d.metadata.name.clone().unwrap_or_default(), Some(d))).collect();
        let mine: Vec<String> = {
            let writes = self.writes.lock().expect("recent");
            writes.keys().filter(|(ns, _)| ns == namespace).map(|(_, n)| n.clone()).collect()
        };
        for name in mine {
            let cached = by_name.remove(&name).flatten();
            by_name.insert(name.clone(), self.resolve(namespace, &name, cached));
        }
        by_name.into_values().flatten().collect()
    }
}

//! The Kubernetes writes of the Ultralytics routes ([`Cluster`]), and [`Recent`]: this
//! replica's own writes, read over the watch cache until the watch has caught up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use ocellus_crds::{Dataset, DatasetSource, Export, ModelDeployment, TrainingJob};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::ApiError;
use crate::api::keys::FIELD_MANAGER;

/// How long a write of this replica overrides an older cached object.
const RECENT_FOR: Duration = Duration::from_secs(60);

/// Creates, changes and deletes what the Ultralytics routes write: Datasets, the project and
/// model records (ConfigMaps), TrainingJobs and Exports.
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
    /// Creates a project or model record; 409 when the name is taken.
    fn create_record(&self, record: ConfigMap) -> BoxFuture<'_, Result<ConfigMap, ApiError>>;
    /// Deletes a record; what it owns (models, TrainingJobs, Exports) goes with it.
    fn delete_record<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), ApiError>>;
    /// Creates a TrainingJob; 409 when the name is taken.
    fn create_training_job(&self, job: TrainingJob) -> BoxFuture<'_, Result<TrainingJob, ApiError>>;
    /// Deletes a TrainingJob (its Jobs and Exports go with it).
    fn delete_training_job<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), ApiError>>;
    /// Creates an Export; 409 when the name is taken.
    fn create_export(&self, export: Export) -> BoxFuture<'_, Result<Export, ApiError>>;
    /// Deletes an Export.
    fn delete_export<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), ApiError>>;
    /// Creates a ModelDeployment; 409 when the name is taken.
    fn create_deployment(&self, md: ModelDeployment) -> BoxFuture<'_, Result<ModelDeployment, ApiError>>;
    /// Applies a JSON merge patch (RFC 7386) to a ModelDeployment.
    fn patch_deployment<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        patch: serde_json::Value,
    ) -> BoxFuture<'a, Result<ModelDeployment, ApiError>>;
    /// Deletes a ModelDeployment (its predictor Deployment goes with it).
    fn delete_deployment<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), ApiError>>;
    /// The logs of a ModelDeployment's predictor pods, each line prefixed with its RFC 3339 time
    /// (the kubelet's `timestamps=true`), from `since_seconds` ago (unset: all that is kept).
    fn predictor_logs<'a>(
        &'a self,
        namespace: &'a str,
        deployment: &'a str,
        since_seconds: Option<i64>,
    ) -> BoxFuture<'a, Result<Vec<PodLog>, ApiError>>;
}

/// The log of one pod, as the Kubernetes API returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLog {
    /// The pod's name.
    pub pod: String,
    /// Its log text, one `<RFC 3339 time> <line>` per line.
    pub text: String,
}

/// The label selector of a ModelDeployment's predictor pods (the operator's labels).
pub fn predictor_selector(deployment: &str) -> String {
    format!("ocellus.dev/kind=ModelDeployment,ocellus.dev/name={deployment}")
}

/// What a kind is called in errors.
fn what<K: kube::Resource<DynamicType = ()>>(name: &str) -> String {
    format!("{} '{name}'", K::kind(&()).to_lowercase())
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

impl KubeCluster {
    async fn create<K>(&self, obj: K) -> Result<K, ApiError>
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + std::fmt::Debug
            + Serialize
            + DeserializeOwned,
    {
        let ns = obj.meta().namespace.clone().unwrap_or_default();
        let name = obj.meta().name.clone().unwrap_or_default();
        let api = Api::<K>::namespaced(self.client.clone(), &ns);
        let pp = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        api.create(&pp, &obj).await.map_err(|e| match &e {
            kube::Error::Api(s) if s.code == 409 => ApiError::Conflict(format!("{} already exists", what::<K>(&name))),
            _ => ApiError::from(e),
        })
    }

    async fn delete<K>(&self, namespace: &str, name: &str) -> Result<(), ApiError>
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + std::fmt::Debug
            + DeserializeOwned,
    {
        let api = Api::<K>::namespaced(self.client.clone(), namespace);
        api.delete(name, &DeleteParams::background()).await.map(|_| ()).map_err(|e| not_found_as(e, what::<K>(name)))
    }
}

impl Cluster for KubeCluster {
    fn create_dataset(&self, dataset: Dataset) -> BoxFuture<'_, Result<Dataset, ApiError>> {
        Box::pin(self.create(dataset))
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
        Box::pin(self.delete::<Dataset>(namespace, name))
    }

    fn create_record(&self, record: ConfigMap) -> BoxFuture<'_, Result<ConfigMap, ApiError>> {
        Box::pin(self.create(record))
    }

    fn delete_record<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(self.delete::<ConfigMap>(namespace, name))
    }

    fn create_training_job(&self, job: TrainingJob) -> BoxFuture<'_, Result<TrainingJob, ApiError>> {
        Box::pin(self.create(job))
    }

    fn delete_training_job<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(self.delete::<TrainingJob>(namespace, name))
    }

    fn create_export(&self, export: Export) -> BoxFuture<'_, Result<Export, ApiError>> {
        Box::pin(self.create(export))
    }

    fn delete_export<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(self.delete::<Export>(namespace, name))
    }

    fn create_deployment(&self, md: ModelDeployment) -> BoxFuture<'_, Result<ModelDeployment, ApiError>> {
        Box::pin(self.create(md))
    }

    fn patch_deployment<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        patch: serde_json::Value,
    ) -> BoxFuture<'a, Result<ModelDeployment, ApiError>> {
        Box::pin(async move {
            let api = Api::<ModelDeployment>::namespaced(self.client.clone(), namespace);
            let pp = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
            api.patch(name, &pp, &Patch::Merge(&patch))
                .await
                .map_err(|e| not_found_as(e, what::<ModelDeployment>(name)))
        })
    }

    fn delete_deployment<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(self.delete::<ModelDeployment>(namespace, name))
    }

    fn predictor_logs<'a>(
        &'a self,
        namespace: &'a str,
        deployment: &'a str,
        since_seconds: Option<i64>,
    ) -> BoxFuture<'a, Result<Vec<PodLog>, ApiError>> {
        Box::pin(async move {
            let pods = Api::<Pod>::namespaced(self.client.clone(), namespace);
            let listed = pods.list(&ListParams::default().labels(&predictor_selector(deployment))).await?;
            let lp = LogParams { timestamps: true, since_seconds, ..Default::default() };
            let mut out = Vec::new();
            for p in listed.items {
                let name = p.metadata.name.unwrap_or_default();
                match pods.logs(&name, &lp).await {
                    Ok(text) => out.push(PodLog { pod: name, text }),
                    // A pod still being scheduled or already gone has no log to read.
                    Err(kube::Error::Api(s)) if s.code == 400 || s.code == 404 => {}
                    Err(e) => return Err(ApiError::from(e)),
                }
            }
            Ok(out)
        })
    }
}

/// `target` with the JSON merge patch `patch` applied (RFC 7386: objects merge, `null` removes,
/// anything else replaces).
pub fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    match (target, patch) {
        (serde_json::Value::Object(t), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// One kind's reflector store and its writer, in memory.
struct MemStore<K: kube::Resource<DynamicType = ()> + Clone + 'static> {
    writer: Mutex<reflector::store::Writer<K>>,
    store: Store<K>,
}

impl<K> Default for MemStore<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    fn default() -> Self {
        let (store, mut writer) = reflector::store::<K>();
        writer.apply_watcher_event(&watcher::Event::InitDone);
        MemStore { writer: Mutex::new(writer), store }
    }
}

/// The revision every write of a [`MemoryCluster`] takes the next of (etcd's is cluster-wide too).
static REVISION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl<K> MemStore<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    fn get(&self, namespace: &str, name: &str) -> Option<K> {
        self.store.get(&reflector::ObjectRef::new(name).within(namespace)).map(|o| (*o).clone())
    }

    /// Stores `o` with the next resourceVersion, as the API server does on every write.
    fn put(&self, o: &K) {
        let mut o = o.clone();
        o.meta_mut().resource_version =
            Some((REVISION.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1).to_string());
        self.writer.lock().expect("writer").apply_watcher_event(&watcher::Event::Apply(o));
    }

    fn remove(&self, o: K) {
        self.writer.lock().expect("writer").apply_watcher_event(&watcher::Event::Delete(o));
    }

    /// Objects with an owner reference to `uid`.
    fn owned_by(&self, uid: &str) -> Vec<K> {
        let owned = |o: &K| o.meta().owner_references.iter().flatten().any(|r| r.uid == uid);
        self.store.state().into_iter().filter(|o| owned(o)).map(|o| (*o).clone()).collect()
    }
}

/// [`Cluster`] in memory, feeding reflector stores as watches would: for tests without a
/// cluster. [`MemoryCluster::set_status`] and its siblings play the operator; deletes cascade
/// along owner references as Kubernetes' garbage collector would.
#[derive(Default)]
pub struct MemoryCluster {
    datasets: MemStore<Dataset>,
    deployments: MemStore<ModelDeployment>,
    records: MemStore<ConfigMap>,
    training_jobs: MemStore<TrainingJob>,
    exports: MemStore<Export>,
    nodes: MemStore<Node>,
    logs: Mutex<HashMap<(String, String), Vec<PodLog>>>,
    next_uid: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for MemoryCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryCluster")
    }
}

impl MemoryCluster {
    /// The Dataset store this cluster feeds.
    pub fn store(&self) -> Store<Dataset> {
        self.datasets.store.clone()
    }

    /// The ModelDeployment store this cluster feeds.
    pub fn deployment_store(&self) -> Store<ModelDeployment> {
        self.deployments.store.clone()
    }

    /// The record (ConfigMap) store this cluster feeds.
    pub fn record_store(&self) -> Store<ConfigMap> {
        self.records.store.clone()
    }

    /// The TrainingJob store this cluster feeds.
    pub fn training_job_store(&self) -> Store<TrainingJob> {
        self.training_jobs.store.clone()
    }

    /// The Export store this cluster feeds.
    pub fn export_store(&self) -> Store<Export> {
        self.exports.store.clone()
    }

    /// The Node store this cluster feeds.
    pub fn node_store(&self) -> Store<Node> {
        self.nodes.store.clone()
    }

    /// Adds or replaces a Node, as if it had registered.
    pub fn put_node(&self, node: Node) {
        self.nodes.put(&node);
    }

    /// Adds or replaces a ModelDeployment, as if applied and reconciled.
    pub fn put_deployment(&self, md: ModelDeployment) {
        self.deployments.put(&md);
    }

    /// Sets the predictor pod logs [`Cluster::predictor_logs`] returns for a deployment.
    pub fn set_predictor_logs(&self, namespace: &str, deployment: &str, logs: Vec<PodLog>) {
        if let Ok(mut l) = self.logs.lock() {
            l.insert((namespace.to_string(), deployment.to_string()), logs);
        }
    }

    /// Replaces the status of a Dataset, as the operator would.
    pub fn set_status(&self, namespace: &str, name: &str, status: ocellus_crds::DatasetStatus) {
        if let Some(mut d) = self.datasets.get(namespace, name) {
            d.status = Some(status);
            self.datasets.put(&d);
        }
    }

    /// Replaces the status of a TrainingJob, as the operator would.
    pub fn set_training_status(&self, namespace: &str, name: &str, status: ocellus_crds::TrainingJobStatus) {
        if let Some(mut t) = self.training_jobs.get(namespace, name) {
            t.status = Some(status);
            self.training_jobs.put(&t);
        }
    }

    /// Replaces the status of an Export, as the operator would.
    pub fn set_export_status(&self, namespace: &str, name: &str, status: ocellus_crds::ExportStatus) {
        if let Some(mut e) = self.exports.get(namespace, name) {
            e.status = Some(status);
            self.exports.put(&e);
        }
    }

    /// A new uid, creation time and first generation, as the API server sets them.
    fn admit<K: kube::Resource>(&self, o: &mut K) {
        let n = self.next_uid.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let meta = o.meta_mut();
        meta.uid = Some(format!("00000000-0000-4000-8000-{n:012x}"));
        meta.generation = Some(1);
        meta.creation_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    }

    fn create<K>(&self, store: &MemStore<K>, mut o: K) -> Result<K, ApiError>
    where
        K: kube::Resource<DynamicType = ()> + Clone + 'static,
    {
        let (ns, name) = (o.meta().namespace.clone().unwrap_or_default(), o.meta().name.clone().unwrap_or_default());
        if store.get(&ns, &name).is_some() {
            return Err(ApiError::Conflict(format!("{} already exists", what::<K>(&name))));
        }
        self.admit(&mut o);
        store.put(&o);
        Ok(o)
    }

    fn delete<K>(&self, store: &MemStore<K>, namespace: &str, name: &str) -> Result<(), ApiError>
    where
        K: kube::Resource<DynamicType = ()> + Clone + 'static,
    {
        let o = store.get(namespace, name).ok_or_else(|| ApiError::NotFound(what::<K>(name)))?;
        let uid = o.meta().uid.clone().unwrap_or_default();
        store.remove(o);
        self.collect_garbage(&uid);
        Ok(())
    }

    /// Deletes what `uid` owned, and what that owned.
    fn collect_garbage(&self, uid: &str) {
        let mut orphans = vec![uid.to_string()];
        while let Some(owner) = orphans.pop() {
            let uid_of =
                |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| m.uid.clone().unwrap_or_default();
            for o in self.records.owned_by(&owner) {
                orphans.push(uid_of(&o.metadata));
                self.records.remove(o);
            }
            for o in self.training_jobs.owned_by(&owner) {
                orphans.push(uid_of(&o.metadata));
                self.training_jobs.remove(o);
            }
            for o in self.exports.owned_by(&owner) {
                orphans.push(uid_of(&o.metadata));
                self.exports.remove(o);
            }
        }
    }
}

impl Cluster for MemoryCluster {
    fn create_dataset(&self, dataset: Dataset) -> BoxFuture<'_, Result<Dataset, ApiError>> {
        Box::pin(async move { self.create(&self.datasets, dataset) })
    }

    fn set_dataset_source<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        source: DatasetSource,
    ) -> BoxFuture<'a, Result<Dataset, ApiError>> {
        Box::pin(async move {
            let mut d = self.datasets.get(namespace, name).ok_or_else(|| ApiError::NotFound(what::<Dataset>(name)))?;
            d.spec.source = source;
            d.metadata.generation = Some(d.metadata.generation.unwrap_or(1) + 1);
            self.datasets.put(&d);
            Ok(d)
        })
    }

    fn delete_dataset<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move { self.delete(&self.datasets, namespace, name) })
    }

    fn create_record(&self, record: ConfigMap) -> BoxFuture<'_, Result<ConfigMap, ApiError>> {
        Box::pin(async move { self.create(&self.records, record) })
    }

    fn delete_record<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move { self.delete(&self.records, namespace, name) })
    }

    fn create_training_job(&self, job: TrainingJob) -> BoxFuture<'_, Result<TrainingJob, ApiError>> {
        Box::pin(async move { self.create(&self.training_jobs, job) })
    }

    fn delete_training_job<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move { self.delete(&self.training_jobs, namespace, name) })
    }

    fn create_export(&self, export: Export) -> BoxFuture<'_, Result<Export, ApiError>> {
        Box::pin(async move { self.create(&self.exports, export) })
    }

    fn delete_export<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move { self.delete(&self.exports, namespace, name) })
    }

    fn create_deployment(&self, md: ModelDeployment) -> BoxFuture<'_, Result<ModelDeployment, ApiError>> {
        Box::pin(async move { self.create(&self.deployments, md) })
    }

    fn patch_deployment<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        patch: serde_json::Value,
    ) -> BoxFuture<'a, Result<ModelDeployment, ApiError>> {
        Box::pin(async move {
            let md = self
                .deployments
                .get(namespace, name)
                .ok_or_else(|| ApiError::NotFound(what::<ModelDeployment>(name)))?;
            let mut v = serde_json::to_value(&md).map_err(ApiError::internal)?;
            merge_patch(&mut v, &patch);
            let mut changed: ModelDeployment =
                serde_json::from_value(v).map_err(|e| ApiError::bad_request("body", e.to_string()))?;
            if changed.spec != md.spec {
                changed.metadata.generation = Some(md.metadata.generation.unwrap_or(1) + 1);
            }
            self.deployments.put(&changed);
            Ok(changed)
        })
    }

    fn delete_deployment<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move { self.delete(&self.deployments, namespace, name) })
    }

    fn predictor_logs<'a>(
        &'a self,
        namespace: &'a str,
        deployment: &'a str,
        _since_seconds: Option<i64>,
    ) -> BoxFuture<'a, Result<Vec<PodLog>, ApiError>> {
        let key = (namespace.to_string(), deployment.to_string());
        let logs = self.logs.lock().ok().and_then(|l| l.get(&key).cloned()).unwrap_or_default();
        Box::pin(async move { Ok(logs) })
    }
}

/// A write of this replica: the object it returned, or the uid it deleted.
#[derive(Debug)]
enum Written<K> {
    Object(Arc<K>),
    Deleted(Option<String>),
}

impl<K> Clone for Written<K> {
    fn clone(&self) -> Self {
        match self {
            Written::Object(o) => Written::Object(o.clone()),
            Written::Deleted(u) => Written::Deleted(u.clone()),
        }
    }
}

/// This replica's recent writes of one kind by namespace and name, kept [`RECENT_FOR`]: a
/// client that created or changed an object reads it back at once, though the watch is a moment
/// late.
#[derive(Debug)]
pub struct Recent<K> {
    writes: Mutex<HashMap<NamespacedName, (Instant, Written<K>)>>,
}

/// Namespace and name.
type NamespacedName = (String, String);

impl<K> Default for Recent<K> {
    fn default() -> Self {
        Recent { writes: Mutex::new(HashMap::new()) }
    }
}

impl<K: kube::Resource> Recent<K> {
    /// Records a created or changed object.
    pub fn wrote(&self, o: K) {
        let key = (o.meta().namespace.clone().unwrap_or_default(), o.meta().name.clone().unwrap_or_default());
        self.insert(key, Written::Object(Arc::new(o)));
    }

    /// Records a deletion of the object with `uid`.
    pub fn deleted(&self, namespace: &str, name: &str, uid: Option<String>) {
        self.insert((namespace.into(), name.into()), Written::Deleted(uid));
    }

    fn insert(&self, key: NamespacedName, w: Written<K>) {
        let mut writes = self.writes.lock().expect("recent");
        let now = Instant::now();
        writes.retain(|_, (t, _)| now.duration_since(*t) < RECENT_FOR);
        writes.insert(key, (now, w));
    }

    fn fresh(&self, namespace: &str, name: &str) -> Option<Written<K>> {
        let writes = self.writes.lock().expect("recent");
        let (t, w) = writes.get(&(namespace.to_string(), name.to_string()))?;
        (t.elapsed() < RECENT_FOR).then(|| w.clone())
    }

    /// The newer of the cached object and this replica's write.
    pub fn resolve(&self, namespace: &str, name: &str, cached: Option<Arc<K>>) -> Option<Arc<K>> {
        match self.fresh(namespace, name) {
            None => cached,
            Some(Written::Deleted(uid)) => cached.filter(|c| c.meta().uid != uid),
            Some(Written::Object(mine)) => match cached {
                Some(c) if c.meta().uid == mine.meta().uid && c.meta().generation >= mine.meta().generation => Some(c),
                _ => Some(mine),
            },
        }
    }

    /// `cached` (one namespace's objects) with this replica's writes applied.
    pub fn merge(&self, namespace: &str, cached: Vec<Arc<K>>) -> Vec<Arc<K>> {
        let mut by_name: std::collections::BTreeMap<String, Option<Arc<K>>> =
            cached.into_iter().map(|d| (d.meta().name.clone().unwrap_or_default(), Some(d))).collect();
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

//! The controllers (Dataset, TrainingJob, Export, ModelDeployment), one module each, and what they share:
//! the context (client, caches, settings, metrics, events), the error type, status writes by
//! server-side apply and kstatus conditions.

pub mod dataset;
pub mod export;
pub mod model_deployment;
pub mod training_job;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use ocellus_crds::{Condition, condition_types, set_condition};
use ocellus_storage::s3::{Fetched, S3Config, Store as S3Store};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::WorkloadConfig;
use crate::metrics::Metrics;
use crate::workload::{self, MANAGED_BY};

/// Errors of a reconcile. Each has a metric label; none is shown to users as is (status carries
/// what users need).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The object store failed while reading a run's outputs.
    #[error("object store: {0}")]
    Storage(String),
    /// A run's output in the object store could not be parsed.
    #[error("unreadable output {uri}: {message}")]
    Output { uri: String, message: String },
    /// The object changed while it was reconciled: retry with the new version.
    #[error("the object changed while it was reconciled")]
    Conflict,
}

impl Error {
    /// The `error` label of the error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Storage(_) => "storage",
            Error::Output { .. } => "output",
            Error::Conflict => "conflict",
        }
    }
}

/// Converts a 409 from an apply with a resourceVersion into [`Error::Conflict`].
fn conflict(e: kube::Error) -> Error {
    match e {
        kube::Error::Api(ref s) if s.code == 409 => Error::Conflict,
        e => Error::Kube(e),
    }
}

/// What every reconcile needs.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Images, bucket and GPU defaults of the Jobs.
    pub config: WorkloadConfig,
    /// The platform bucket, read for the runs' outputs (summaries, results, sidecars).
    pub bucket: S3Store,
    /// Jobs the operator created.
    pub jobs: Store<Job>,
    /// Pods of those Jobs and of the predictor Deployments.
    pub pods: Store<Pod>,
    /// Predictor Deployments the operator created.
    pub deployments: Store<Deployment>,
    /// HTTP client that reads the predictor pods' metrics.
    pub http: reqwest::Client,
    /// Autoscaler memory per ModelDeployment (lost on restart, which the autoscaler allows for).
    scalers: Mutex<HashMap<String, crate::autoscale::State>>,
    /// The PodDisruptionBudget API version the cluster serves (`v1`, or `v1beta1` before 1.21).
    pdb_version: Mutex<Option<&'static str>>,
    /// ETag and body of the last conditional read of each polled object, by URI.
    reads: Mutex<HashMap<String, (String, bytes::Bytes)>>,
    /// Calls of [`Context::prune_scalers`].
    prune_tick: std::sync::atomic::AtomicU64,
    /// Metrics.
    pub metrics: Metrics,
    /// Event publisher.
    pub recorder: Recorder,
    /// Consecutive reconcile errors per object, for back-off.
    failures: Mutex<HashMap<String, u32>>,
    /// Events being published.
    events_in_flight: InFlight,
}

/// Events in flight at most: past it, new ones are dropped and counted, as client-go's
/// broadcaster drops when its queue of 1000 is full, so that an API server refusing Events
/// cannot grow the operator's memory without bound.
const MAX_EVENTS_IN_FLIGHT: usize = 1000;

/// A count of tasks in flight with a ceiling; a [`Slot`] holds one place until dropped (also
/// when its task panics or is cancelled).
#[derive(Debug, Clone)]
struct InFlight {
    n: Arc<AtomicUsize>,
    max: usize,
}

/// One place in an [`InFlight`].
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl InFlight {
    fn new(max: usize) -> InFlight {
        InFlight { n: Arc::default(), max }
    }

    /// A place, or `None` when `max` are taken.
    fn try_acquire(&self) -> Option<Slot> {
        let slot = Slot(self.n.clone());
        (self.n.fetch_add(1, Ordering::AcqRel) < self.max).then_some(slot)
    }
}

impl Context {
    /// The Job `name` in `namespace`, from the cache.
    pub fn job(&self, namespace: &str, name: &str) -> Option<Arc<Job>> {
        self.jobs.get(&ObjectRef::new(name).within(namespace))
    }

    /// Jobs owned by the object with `uid`, from the cache.
    pub fn jobs_of(&self, uid: &str) -> Vec<Arc<Job>> {
        self.jobs.state().into_iter().filter(|j| owned_by(j.owner_references(), uid)).collect()
    }

    /// Pods of `job`, from the cache.
    pub fn pods_of(&self, job: &Job) -> Vec<Arc<Pod>> {
        let Some(uid) = job.metadata.uid.as_deref() else { return vec![] };
        self.pods.state().into_iter().filter(|p| owned_by(p.owner_references(), uid)).collect()
    }

    /// The state of the run of Job `name`.
    pub fn run_state(&self, namespace: &str, name: &str) -> (Option<Arc<Job>>, workload::RunState) {
        let job = self.job(namespace, name);
        let pods = job.as_deref().map(|j| self.pods_of(j)).unwrap_or_default();
        let refs: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
        let state = workload::observe(job.as_deref(), &refs);
        (job, state)
    }

    /// Creates or updates a Job by server-side apply under `manager`.
    pub async fn apply_job(&self, job: &Job, manager: &str) -> Result<(), Error> {
        self.apply(job, manager).await
    }

    /// Creates or updates a namespaced child by server-side apply under `manager`.
    pub async fn apply<K>(&self, obj: &K, manager: &str) -> Result<(), Error>
    where
        K: Resource<DynamicType = ()> + Resource<Scope = kube::core::NamespaceResourceScope>,
        K: Clone + DeserializeOwned + Serialize + std::fmt::Debug,
    {
        let ns = obj.meta().namespace.as_deref().unwrap_or_default();
        let api: Api<K> = Api::namespaced(self.client.clone(), ns);
        let params = PatchParams::apply(manager).force();
        api.patch(&obj.name_any(), &params, &Patch::Apply(obj)).await?;
        Ok(())
    }

    /// The predictor Deployment `name` in `namespace`, from the cache.
    pub fn deployment(&self, namespace: &str, name: &str) -> Option<Arc<Deployment>> {
        self.deployments.get(&ObjectRef::new(name).within(namespace))
    }

    /// Pods labelled as belonging to the Ocellus object `kind`/`name`, from the cache.
    pub fn pods_of_kind(&self, namespace: &str, kind: &str, name: &str) -> Vec<Arc<Pod>> {
        self.pods
            .state()
            .into_iter()
            .filter(|p| {
                p.namespace().as_deref() == Some(namespace)
                    && p.labels().get(workload::KIND_LABEL).map(String::as_str) == Some(kind)
                    && p.labels().get(workload::NAME_LABEL).map(String::as_str) == Some(name)
            })
            .collect()
    }

    /// Sets only the replicas of a Deployment (server-side apply of `spec.replicas`).
    pub async fn scale_deployment(
        &self,
        namespace: &str,
        name: &str,
        replicas: i32,
        manager: &str,
    ) -> Result<(), Error> {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), namespace);
        let body = serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name}, "spec": {"replicas": replicas},
        });
        api.patch(name, &PatchParams::apply(manager).force(), &Patch::Apply(&body)).await?;
        Ok(())
    }

    /// One autoscaling decision for the object `key`, with its remembered state.
    pub fn decide(
        &self,
        key: &str,
        policy: &crate::autoscale::Policy,
        obs: &crate::autoscale::Observation,
    ) -> crate::autoscale::Decision {
        let mut m = self.scalers.lock().unwrap_or_else(|e| e.into_inner());
        crate::autoscale::decide(policy, m.entry(key.to_string()).or_default(), obs)
    }

    /// Every 256th call, keeps only the autoscaler states whose key passes `keep` (deleted
    /// objects are never reconciled again; pruning on every reconcile would cost O(n) each).
    pub fn prune_scalers(&self, keep: impl Fn(&str) -> bool) {
        if !self.prune_tick.fetch_add(1, std::sync::atomic::Ordering::Relaxed).is_multiple_of(256) {
            return;
        }
        self.scalers.lock().unwrap_or_else(|e| e.into_inner()).retain(|k, _| keep(k));
    }

    /// Drops the autoscaler state of `key` (stopped, expired or deleted).
    pub fn forget_scaler(&self, key: &str) {
        self.scalers.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }

    async fn pdb_api(&self, namespace: &str) -> Result<Api<DynamicObject>, Error> {
        let known = *self.pdb_version.lock().unwrap_or_else(|e| e.into_inner());
        let version = match known {
            Some(v) => v,
            None => {
                let groups = self.client.list_api_group_resources("policy/v1").await;
                let v = if groups.is_ok_and(|g| g.resources.iter().any(|r| r.name == "poddisruptionbudgets")) {
                    "v1"
                } else {
                    "v1beta1"
                };
                *self.pdb_version.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
                v
            }
        };
        let gvk = GroupVersionKind::gvk("policy", version, "PodDisruptionBudget");
        let ar = ApiResource::from_gvk_with_plural(&gvk, "poddisruptionbudgets");
        Ok(Api::namespaced_with(self.client.clone(), namespace, &ar))
    }

    /// Applies a PodDisruptionBudget in the version the cluster serves (its fields are the same
    /// in `policy/v1beta1`, which Kubernetes before 1.21 serves instead of `v1`).
    pub async fn apply_pdb(
        &self,
        pdb: &k8s_openapi::api::policy::v1::PodDisruptionBudget,
        manager: &str,
    ) -> Result<(), Error> {
        let ns = pdb.metadata.namespace.as_deref().unwrap_or_default();
        let api = self.pdb_api(ns).await?;
        let mut body =
            serde_json::to_value(pdb).map_err(|e| Error::Output { uri: "pdb".into(), message: e.to_string() })?;
        let version = api.resource_url().contains("/v1beta1/");
        body["apiVersion"] = serde_json::json!(if version { "policy/v1beta1" } else { "policy/v1" });
        body["kind"] = serde_json::json!("PodDisruptionBudget");
        api.patch(&pdb.name_any(), &PatchParams::apply(manager).force(), &Patch::Apply(&body)).await?;
        Ok(())
    }

    /// Deletes a PodDisruptionBudget if it exists.
    pub async fn delete_pdb(&self, namespace: &str, name: &str) -> Result<(), Error> {
        match self.pdb_api(namespace).await?.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Publishes an Event about `obj` off the reconcile's path, as client-go's recorder does:
    /// Events are best-effort, and a slow API server should delay them, not the reconcile.
    pub fn event<K: Resource<DynamicType = ()>>(&self, obj: &K, warning: bool, reason: &str, note: String) {
        let ev = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        let Some(slot) = self.events_in_flight.try_acquire() else {
            self.metrics.events_dropped.inc();
            tracing::debug!(reason, "event dropped: too many in flight");
            return;
        };
        let (recorder, reference) = (self.recorder.clone(), object_ref(obj));
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&ev, &reference).await {
                tracing::warn!(error = %e, "publishing an event failed");
            }
            drop(slot);
        });
    }

    /// Reads an object of the platform bucket by `s3://` URI; `None` when it does not exist.
    pub async fn read(&self, uri: &str) -> Result<Option<bytes::Bytes>, Error> {
        let key = self.key_of(uri)?;
        self.bucket.get_opt(&key).await.map_err(|e| Error::Storage(e.to_string()))
    }

    /// Like [`Context::read`], by a conditional GET against the ETag of the last read of `uri`:
    /// an unchanged object (a training run's `results.jsonl` between epochs) is not transferred
    /// again. The cache holds the objects of runs being polled; it is emptied past 1024 entries.
    pub async fn read_cached(&self, uri: &str) -> Result<Option<bytes::Bytes>, Error> {
        let key = self.key_of(uri)?;
        let known = self.reads.lock().unwrap_or_else(|e| e.into_inner()).get(uri).cloned();
        let etag = known.as_ref().map(|(etag, _)| etag.as_str());
        match self.bucket.get_if_changed(&key, etag).await.map_err(|e| Error::Storage(e.to_string()))? {
            Fetched::Missing => {
                self.reads.lock().unwrap_or_else(|e| e.into_inner()).remove(uri);
                Ok(None)
            }
            Fetched::NotModified => Ok(known.map(|(_, b)| b)),
            Fetched::Body { bytes, etag } => {
                let mut reads = self.reads.lock().unwrap_or_else(|e| e.into_inner());
                if reads.len() >= 1024 {
                    reads.clear();
                }
                match etag {
                    Some(etag) => reads.insert(uri.to_string(), (etag, bytes.clone())),
                    None => reads.remove(uri),
                };
                Ok(Some(bytes))
            }
        }
    }

    /// Forgets the cached reads of a run whose polling has ended.
    pub fn forget_reads(&self, uri: &str) {
        self.reads.lock().unwrap_or_else(|e| e.into_inner()).remove(uri);
    }

    /// Size of an object of the platform bucket; `None` when it does not exist.
    pub async fn size(&self, uri: &str) -> Result<Option<u64>, Error> {
        let key = self.key_of(uri)?;
        self.bucket.head(&key).await.map_err(|e| Error::Storage(e.to_string()))
    }

    fn key_of(&self, uri: &str) -> Result<String, Error> {
        let prefix = format!("s3://{}/", self.config.s3_bucket);
        uri.strip_prefix(&prefix)
            .map(str::to_string)
            .ok_or_else(|| Error::Output { uri: uri.into(), message: "not in the platform bucket".into() })
    }

    /// Back-off after an error: 1 s doubled per consecutive error of the object, at most 5 min.
    fn backoff(&self, key: &str) -> Duration {
        let mut m = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(key.to_string()).or_insert(0);
        *n = (*n + 1).min(16);
        Duration::from_secs((1u64 << (*n - 1)).min(300))
    }

    fn succeeded(&self, key: &str) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

fn owned_by(refs: &[OwnerReference], uid: &str) -> bool {
    refs.iter().any(|r| r.uid == uid)
}

/// An object reference for events.
pub fn object_ref<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    obj.object_ref(&())
}

/// The controller owner reference of `obj` (children are deleted with it).
pub fn owner_ref<K: Resource<DynamicType = ()>>(obj: &K) -> OwnerReference {
    let mut r = obj.controller_owner_ref(&()).unwrap_or_default();
    r.block_owner_deletion = Some(true);
    r
}

/// Now, as a Kubernetes time.
pub fn now() -> Time {
    Time(Timestamp::now())
}

/// The overall state an object's conditions express.
#[derive(Clone, Debug, PartialEq)]
pub enum Health {
    /// Work under way (or waiting for something that will come).
    Progressing { reason: String, message: String },
    /// The desired state is reached.
    Ready { reason: String, message: String },
    /// Given up until the spec changes.
    Failed { reason: String, message: String },
}

/// Writes the conditions of `health`: `Ready`, `Progressing` and `Failed` always, and kstatus'
/// abnormal-true `Reconciling` and `Stalled` only while they hold (kstatus, and so Flux and Argo
/// CD health checks, read those).
pub fn set_health(conditions: &mut Vec<Condition>, health: &Health, generation: Option<i64>, now: Time) {
    let (ready, progressing, failed, reason, message) = match health {
        Health::Progressing { reason, message } => (false, true, false, reason, message),
        Health::Ready { reason, message } => (true, false, false, reason, message),
        Health::Failed { reason, message } => (false, false, true, reason, message),
    };
    for (type_, status) in [
        (condition_types::READY, ready),
        (condition_types::PROGRESSING, progressing),
        (condition_types::FAILED, failed),
        (RECONCILING, progressing),
        (STALLED, failed),
    ] {
        if !status && (type_ == RECONCILING || type_ == STALLED) {
            conditions.retain(|c| c.type_ != type_);
            continue;
        }
        let mut c = Condition::new(type_, status, reason, message.clone());
        c.observed_generation = generation;
        set_condition(conditions, c, now.clone());
    }
}

/// kstatus' condition for work in progress.
pub const RECONCILING: &str = "Reconciling";
/// kstatus' condition for a resource that cannot make progress.
pub const STALLED: &str = "Stalled";

/// Writes `status` by server-side apply on the status subresource, under `manager`, on the
/// resourceVersion the reconcile read: a status computed from a stale object is refused
/// ([`Error::Conflict`]) instead of overwriting newer progress.
pub async fn apply_status<K>(client: &Client, obj: &K, status: impl Serialize, manager: &str) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    K: Resource<Scope = kube::core::NamespaceResourceScope>,
{
    let api: Api<K> = Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default());
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"name": obj.name_any(), "resourceVersion": obj.resource_version()},
        "status": status,
    });
    api.patch_status(&obj.name_any(), &PatchParams::apply(manager).force(), &Patch::Apply(&body))
        .await
        .map_err(conflict)?;
    Ok(())
}

/// The result of a reconcile as kube-runtime wants it, with metrics and per-object back-off.
pub fn finish(ctx: &Context, controller: &str, key: &str, result: Result<Action, Error>) -> Result<Action, Error> {
    match &result {
        Ok(_) => ctx.succeeded(key),
        Err(e) => ctx.metrics.error(controller, e.metric_label()),
    }
    result
}

/// What kube-runtime does after a failed reconcile: retry with per-object exponential back-off
/// (a conflict is retried at once: the newer object is already there).
pub fn error_policy_for(ctx: &Context, key: &str, error: &Error) -> Action {
    match error {
        Error::Conflict => Action::requeue(Duration::from_millis(200)),
        e => {
            let delay = ctx.backoff(key);
            tracing::warn!(object = key, error = %e, retry_in = ?delay, "reconcile failed");
            Action::requeue(delay)
        }
    }
}

/// Watch settings for what the operator created.
pub fn managed() -> watcher::Config {
    watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1))
}

/// Everything the controllers run on.
pub struct Runtime {
    /// The shared context.
    pub ctx: Arc<Context>,
    /// Keeps the Job, Pod and Deployment caches filled.
    pub reflectors: Vec<tokio::task::JoinHandle<()>>,
}

/// A cache of what the operator created of kind `K`, and the task that keeps it filled. The
/// cache keeps no managedFields: nothing reads them, and they are a large part of each Pod
/// (about a third of the operator's memory with 1000 pending pods).
fn cache<K>(client: &Client, namespace: Option<&str>) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K: Resource<Scope = kube::core::NamespaceResourceScope>,
{
    let (store, writer) = reflector::store::<K>();
    let task = watcher(scoped::<K>(client, namespace), managed())
        .default_backoff()
        .modify(|o| o.managed_fields_mut().clear())
        .reflect(writer)
        .for_each(|_| futures::future::ready(()));
    (store, tokio::spawn(task))
}

/// Starts the Job and Pod caches and builds the context.
pub async fn start(
    client: Client,
    config: WorkloadConfig,
    s3: S3Config,
    namespace: Option<&str>,
    metrics: Metrics,
    instance: String,
) -> Runtime {
    let (jobs, job_cache) = cache::<Job>(&client, namespace);
    let (pods, pod_cache) = cache::<Pod>(&client, namespace);
    let (deployments, deployment_cache) = cache::<Deployment>(&client, namespace);
    let reflectors = vec![job_cache, pod_cache, deployment_cache];
    let bucket = S3Store::new(&s3, &config.s3_bucket);
    let recorder =
        Recorder::new(client.clone(), Reporter { controller: "ocellus-operator".into(), instance: Some(instance) });
    let ctx = Arc::new(Context {
        client,
        config,
        bucket,
        jobs: jobs.clone(),
        pods: pods.clone(),
        deployments: deployments.clone(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .connect_timeout(Duration::from_millis(500))
            .build()
            .unwrap_or_default(),
        scalers: Mutex::new(HashMap::new()),
        pdb_version: Mutex::new(None),
        prune_tick: std::sync::atomic::AtomicU64::new(0),
        reads: Mutex::new(HashMap::new()),
        metrics,
        recorder,
        failures: Mutex::new(HashMap::new()),
        events_in_flight: InFlight::new(MAX_EVENTS_IN_FLIGHT),
    });
    // Reconciles read the caches: wait until both have listed once.
    let _ = jobs.wait_until_ready().await;
    let _ = pods.wait_until_ready().await;
    let _ = deployments.wait_until_ready().await;
    Runtime { ctx, reflectors }
}

/// An Api over all namespaces, or one.
pub fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    K: Resource<Scope = kube::core::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The key of an object for logs and back-off (never a metric label).
pub fn key_of<K: Resource>(obj: &K) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_admits_up_to_its_ceiling_and_frees_places_on_drop() {
        let f = InFlight::new(2);
        let (a, b) = (f.try_acquire(), f.try_acquire());
        assert!(a.is_some() && b.is_some());
        assert!(f.try_acquire().is_none(), "third place past a ceiling of 2");
        assert!(f.try_acquire().is_none(), "a refusal takes no place");
        drop(a);
        let c = f.try_acquire();
        assert!(c.is_some(), "a dropped slot frees its place");
        drop((b, c));
        assert_eq!(f.n.load(Ordering::Acquire), 0);
    }
}

//! The Kubernetes half of the gateway: watches that feed the [`Index`], and the annotation
//! patches that wake deployments.
//!
//! - ModelDeployments: a reflector (its [`Store`] is kept for the REST APIs to come); each
//!   event sets the deployment's [`DeploymentInfo`], a (re-)list replaces them all.
//! - EndpointSlices: `discovery.k8s.io/v1` where served, else `v1beta1` (Kubernetes 1.20, the
//!   local test cluster, serves only that), read as [`DynamicObject`]s, chosen once by discovery.
//!   A predictor Service is named after its ModelDeployment, so a slice's
//!   `kubernetes.io/service-name` label names the deployment; the ready addresses of all its
//!   slices, on the port named `http`, are the deployment's endpoints.
//! - Wake requests: a JSON merge patch of `ocellus.dev/wake-requested-at` (RFC 3339, now) and
//!   `ocellus.dev/held-requests` on the ModelDeployment, one at a time, coalesced per deployment.
//!
//! Requests wait (up to the hold timeout) until both watches have listed once.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use ocellus_crds::{DeploymentPhase, ModelDeployment};
use serde::Deserialize;
use tokio::task::JoinHandle;

use super::Gateway;
use super::index::{DeploymentInfo, DeploymentKey, Index, Lifecycle, WakeReceiver, WakeRequest};
use super::metrics::GatewayMetrics;

/// The label of an EndpointSlice that names its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Annotation: when the gateway last asked for the deployment to be scaled up (RFC 3339).
pub const WAKE_ANNOTATION: &str = "ocellus.dev/wake-requested-at";
/// Annotation: requests the gateway holds for the deployment (a decimal string).
pub const HELD_ANNOTATION: &str = "ocellus.dev/held-requests";
/// Field manager of the gateway's patches.
pub const FIELD_MANAGER: &str = "ocellus-apiserver-gateway";

/// What the watches select.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// Name of the predictor Services' port to send to (`http`).
    pub port_name: String,
    /// Label selector of the EndpointSlices to watch. The default, `kubernetes.io/service-name`,
    /// selects all Services' slices (cheap: only addresses are kept); where the EndpointSlice
    /// controller copies Service labels (Kubernetes ≥ 1.20),
    /// `ocellus.dev/modeldeployment` narrows it to predictor Services.
    pub endpointslice_selector: String,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig { port_name: "http".into(), endpointslice_selector: SERVICE_NAME_LABEL.into() }
    }
}

/// The running watches.
#[derive(Debug)]
pub struct Watches {
    /// The ModelDeployment cache (all namespaces).
    pub deployments: Store<ModelDeployment>,
    /// The watch and patch tasks; they run until aborted.
    pub tasks: Vec<JoinHandle<()>>,
}

/// Why the EndpointSlice API could not be chosen.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// Discovery of `discovery.k8s.io` failed.
    #[error("discovering the discovery.k8s.io API group: {0}")]
    Api(#[from] kube::Error),
    /// The group serves neither `v1` nor `v1beta1` EndpointSlices.
    #[error("the API server serves EndpointSlice in neither discovery.k8s.io/v1 nor v1beta1")]
    NotServed,
}

/// Starts the ModelDeployment and EndpointSlice watches feeding `gateway`'s index and the
/// task that turns `wakes` into patches. Returns at once; discovery of the EndpointSlice
/// version happens in its task (retried until it succeeds), so the apiserver starts even while
/// the API server is unreachable.
pub fn spawn(client: Client, gateway: &Gateway, wakes: WakeReceiver, config: WatchConfig) -> Watches {
    let gate = Arc::new(SyncGate::default());
    let (deployments, writer) = reflector::store::<ModelDeployment>();
    let index = gateway.index().clone();
    let md_task = {
        let (index, gate) = (index.clone(), gate.clone());
        let stream = watcher(Api::<ModelDeployment>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .reflect(writer);
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut listing: HashMap<DeploymentKey, DeploymentInfo> = HashMap::new();
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Init) => listing.clear(),
                    Ok(watcher::Event::InitApply(md)) => {
                        listing.insert(key_of(&md), deployment_info(&md));
                    }
                    Ok(watcher::Event::InitDone) => {
                        index.replace_deployments(std::mem::take(&mut listing));
                        gate.listed(&gate.deployments, &index);
                    }
                    Ok(watcher::Event::Apply(md)) => index.set_deployment(&key_of(&md), Some(deployment_info(&md))),
                    Ok(watcher::Event::Delete(md)) => index.set_deployment(&key_of(&md), None),
                    Err(e) => tracing::warn!(error = %e, "ModelDeployment watch failed; retrying"),
                }
            }
        })
    };
    let slice_task = {
        let (client, index, gate) = (client.clone(), index.clone(), gate.clone());
        tokio::spawn(async move { watch_endpoint_slices(client, index, gate, config).await })
    };
    let wake_task = tokio::spawn(patch_wakes(client, wakes, gateway.metrics().clone()));
    Watches { deployments, tasks: vec![md_task, slice_task, wake_task] }
}

/// Marks the index synced once both watches have listed.
#[derive(Debug, Default)]
struct SyncGate {
    deployments: AtomicBool,
    slices: AtomicBool,
}

impl SyncGate {
    fn listed(&self, which: &AtomicBool, index: &Index) {
        which.store(true, Ordering::SeqCst);
        if self.deployments.load(Ordering::SeqCst) && self.slices.load(Ordering::SeqCst) && !index.is_synced() {
            tracing::info!("gateway: ModelDeployments and EndpointSlices listed");
            index.mark_synced();
        }
    }
}

/// The index key of a ModelDeployment.
pub fn key_of(md: &ModelDeployment) -> DeploymentKey {
    DeploymentKey::new(md.namespace().unwrap_or_default(), md.name_any())
}

/// What the gateway takes from a ModelDeployment. `spec.stopped` counts at once (the status
/// may lag); expiry and failure come from `status.phase`.
pub fn deployment_info(md: &ModelDeployment) -> DeploymentInfo {
    let phase = md.status.as_ref().map(|s| s.phase);
    let lifecycle = if md.spec.stopped {
        Lifecycle::Stopped
    } else {
        match phase {
            Some(DeploymentPhase::Expired) => Lifecycle::Expired,
            Some(DeploymentPhase::Failed) => Lifecycle::Failed,
            _ => Lifecycle::Active,
        }
    };
    DeploymentInfo { lifecycle, model_version: md.status.as_ref().and_then(|s| s.model_version.clone()) }
}

/// The EndpointSlice resource to watch: `discovery.k8s.io/v1` if served, else `v1beta1`.
pub async fn endpoint_slice_resource(client: &Client) -> Result<ApiResource, DiscoveryError> {
    let group = kube::discovery::group(client, "discovery.k8s.io").await?;
    for version in ["v1", "v1beta1"] {
        if let Some((ar, _)) = group.versioned_resources(version).into_iter().find(|(ar, _)| ar.kind == "EndpointSlice")
        {
            return Ok(ar);
        }
    }
    Err(DiscoveryError::NotServed)
}

async fn watch_endpoint_slices(client: Client, index: Index, gate: Arc<SyncGate>, config: WatchConfig) {
    let mut delay = Duration::from_millis(500);
    let resource = loop {
        match endpoint_slice_resource(&client).await {
            Ok(ar) => break ar,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_s = delay.as_secs_f64(), "choosing the EndpointSlice API version");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    };
    tracing::info!(api_version = %resource.api_version, selector = %config.endpointslice_selector, "gateway: watching EndpointSlices");
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let stream = watcher(api, watcher::Config::default().labels(&config.endpointslice_selector)).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut slices = SliceTracker::new(&config.port_name);
    let mut listing: Vec<DynamicObject> = Vec::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => listing.clear(),
            Ok(watcher::Event::InitApply(s)) => listing.push(s),
            Ok(watcher::Event::InitDone) => {
                index.replace_endpoints(slices.replace(std::mem::take(&mut listing)));
                gate.listed(&gate.slices, &index);
            }
            Ok(watcher::Event::Apply(s)) => {
                for (key, addrs) in slices.apply(&s) {
                    index.set_endpoints(&key, addrs);
                }
            }
            Ok(watcher::Event::Delete(s)) => {
                for (key, addrs) in slices.delete(&s) {
                    index.set_endpoints(&key, addrs);
                }
            }
            Err(e) => tracing::warn!(error = %e, "EndpointSlice watch failed; retrying"),
        }
    }
}

/// The fields of an EndpointSlice the gateway reads; the same in `v1` and `v1beta1`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SliceData {
    #[serde(default)]
    address_type: Option<String>,
    #[serde(default)]
    endpoints: Option<Vec<SliceEndpoint>>,
    #[serde(default)]
    ports: Option<Vec<SlicePort>>,
}

#[derive(Debug, Deserialize)]
struct SliceEndpoint {
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    conditions: Option<SliceConditions>,
}

#[derive(Debug, Deserialize)]
struct SliceConditions {
    #[serde(default)]
    ready: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct SlicePort {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    port: Option<i32>,
}

/// The ready addresses of one EndpointSlice on the port named `port_name` (or its only port,
/// when it has one unnamed port). An endpoint is ready unless `conditions.ready` is `false`
/// (unset means ready, as the API documents). FQDN slices and unparsable addresses are skipped.
pub fn ready_addresses(slice: &DynamicObject, port_name: &str) -> Vec<SocketAddr> {
    let data: SliceData = match serde_json::from_value(slice.data.clone()) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(slice = %slice.name_any(), error = %e, "unreadable EndpointSlice; ignored");
            return Vec::new();
        }
    };
    if data.address_type.as_deref().is_some_and(|t| t != "IPv4" && t != "IPv6") {
        return Vec::new();
    }
    let ports = data.ports.unwrap_or_default();
    let port = ports
        .iter()
        .find(|p| p.name.as_deref() == Some(port_name))
        .or_else(|| match ports.as_slice() {
            [only] if only.name.as_deref().unwrap_or("").is_empty() => Some(only),
            _ => None,
        })
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok());
    let Some(port) = port else { return Vec::new() };
    data.endpoints
        .unwrap_or_default()
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .filter_map(|e| e.addresses.first())
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

/// The deployment an EndpointSlice belongs to (through `kubernetes.io/service-name`).
pub fn slice_deployment(slice: &DynamicObject) -> Option<DeploymentKey> {
    let service = slice.labels().get(SERVICE_NAME_LABEL)?;
    Some(DeploymentKey::new(slice.namespace()?, service.clone()))
}

/// The EndpointSlices seen, folded into each Service's (deployment's) ready addresses.
#[derive(Debug)]
pub struct SliceTracker {
    port_name: String,
    /// `(namespace, slice name)` → its deployment and ready addresses.
    slices: HashMap<(String, String), (DeploymentKey, Vec<SocketAddr>)>,
}

impl SliceTracker {
    /// An empty tracker reading the port named `port_name`.
    pub fn new(port_name: &str) -> Self {
        SliceTracker { port_name: port_name.to_string(), slices: HashMap::new() }
    }

    fn slice_key(slice: &DynamicObject) -> (String, String) {
        (slice.namespace().unwrap_or_default(), slice.name_any())
    }

    /// The union of the ready addresses of `key`'s slices, sorted.
    pub fn addresses(&self, key: &DeploymentKey) -> Vec<SocketAddr> {
        let mut all: Vec<SocketAddr> =
            self.slices.values().filter(|(k, _)| k == key).flat_map(|(_, a)| a.iter().copied()).collect();
        all.sort();
        all.dedup();
        all
    }

    /// Records an added or changed slice; returns the addresses of each deployment it changes
    /// (two when its service label changed, none for a slice of no Service).
    pub fn apply(&mut self, slice: &DynamicObject) -> Vec<(DeploymentKey, Vec<SocketAddr>)> {
        let Some(key) = slice_deployment(slice) else {
            return self.delete(slice);
        };
        let addrs = ready_addresses(slice, &self.port_name);
        let mut changed = Vec::new();
        if let Some((old, _)) = self.slices.insert(Self::slice_key(slice), (key.clone(), addrs))
            && old != key
        {
            changed.push((old.clone(), self.addresses(&old)));
        }
        changed.push((key.clone(), self.addresses(&key)));
        changed
    }

    /// Forgets a deleted slice; returns its deployment's remaining addresses.
    pub fn delete(&mut self, slice: &DynamicObject) -> Vec<(DeploymentKey, Vec<SocketAddr>)> {
        let Some((key, _)) = self.slices.remove(&Self::slice_key(slice)) else { return Vec::new() };
        let addrs = self.addresses(&key);
        vec![(key, addrs)]
    }

    /// Replaces everything after a (re-)list; returns every deployment's addresses.
    pub fn replace(&mut self, all: Vec<DynamicObject>) -> HashMap<DeploymentKey, Vec<SocketAddr>> {
        self.slices.clear();
        for s in &all {
            if let Some(key) = slice_deployment(s) {
                self.slices.insert(Self::slice_key(s), (key, ready_addresses(s, &self.port_name)));
            }
        }
        let keys: Vec<DeploymentKey> = self.slices.values().map(|(k, _)| k.clone()).collect();
        keys.into_iter().map(|k| (k.clone(), self.addresses(&k))).collect()
    }
}

/// The merge patch of a wake request at `now`.
pub fn wake_patch(req: &WakeRequest, now: DateTime<Utc>) -> serde_json::Value {
    let mut annotations = serde_json::Map::new();
    if req.wake {
        annotations.insert(WAKE_ANNOTATION.into(), now.to_rfc3339_opts(SecondsFormat::Secs, true).into());
    }
    annotations.insert(HELD_ANNOTATION.into(), req.held.to_string().into());
    serde_json::json!({ "metadata": { "annotations": annotations } })
}

/// Folds queued wake requests per deployment: the latest held count, and a wake if any asked.
fn coalesce(first: WakeRequest, rx: &mut WakeReceiver) -> Vec<WakeRequest> {
    let mut out: Vec<WakeRequest> = vec![first];
    while let Ok(next) = rx.try_recv() {
        match out.iter_mut().find(|r| r.key == next.key) {
            Some(r) => {
                r.held = next.held;
                r.wake |= next.wake;
            }
            None => out.push(next),
        }
    }
    out
}

async fn patch_wakes(client: Client, mut wakes: WakeReceiver, metrics: GatewayMetrics) {
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    while let Some(first) = wakes.recv().await {
        for req in coalesce(first, &mut wakes) {
            let api: Api<ModelDeployment> = Api::namespaced(client.clone(), &req.key.namespace);
            let patch = wake_patch(&req, Utc::now());
            match api.patch(&req.key.name, &params, &Patch::Merge(&patch)).await {
                Ok(_) => {
                    metrics.wake_patches.with_label_values(&["ok"]).inc();
                    tracing::info!(deployment = %req.key, held = req.held, wake = req.wake, "gateway: annotated deployment");
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    tracing::debug!(deployment = %req.key, "gateway: deployment gone before its wake patch");
                }
                Err(e) => {
                    metrics.wake_patches.with_label_values(&["error"]).inc();
                    tracing::warn!(deployment = %req.key, error = %e, "gateway: wake patch failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ocellus_crds::{ModelDeploymentSpec, ModelDeploymentStatus};

    fn slice(version: &str, ns: &str, name: &str, service: Option<&str>, data: serde_json::Value) -> DynamicObject {
        let mut obj = serde_json::json!({
            "apiVersion": format!("discovery.k8s.io/{version}"),
            "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": ns, "labels": {}},
        });
        if let Some(s) = service {
            obj["metadata"]["labels"][SERVICE_NAME_LABEL] = s.into();
        }
        for (k, v) in data.as_object().expect("object") {
            obj[k] = v.clone();
        }
        serde_json::from_value(obj).expect("slice")
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn reads_ready_addresses_of_v1_and_v1beta1_slices() {
        let data = serde_json::json!({
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["127.0.1.5"], "conditions": {"ready": true}},
                {"addresses": ["127.0.1.6"], "conditions": {"ready": false}},
                {"addresses": ["127.0.1.7", "127.0.1.8"], "conditions": {}},
                {"addresses": ["not-an-ip"], "conditions": {"ready": true}},
            ],
            "ports": [{"name": "metrics", "port": 9090}, {"name": "http", "port": 8080, "protocol": "TCP"}],
        });
        for v in ["v1", "v1beta1"] {
            let s = slice(v, "ns", "d-abc", Some("d"), data.clone());
            assert_eq!(ready_addresses(&s, "http"), vec![addr("127.0.1.5:8080"), addr("127.0.1.7:8080")], "{v}");
            assert_eq!(slice_deployment(&s), Some(DeploymentKey::new("ns", "d")));
        }
        // v1beta1 in 1.20 also carries `topology`; unknown fields are ignored.
        let s = slice(
            "v1beta1",
            "ns",
            "d-x",
            Some("d"),
            serde_json::json!({"addressType": "IPv6", "endpoints": [{"addresses": ["::1"], "topology": {"kubernetes.io/hostname": "n"}}], "ports": [{"port": 80}]}),
        );
        assert_eq!(ready_addresses(&s, "http"), vec![addr("[::1]:80")], "a single unnamed port is used");
    }

    #[test]
    fn slices_without_the_port_or_endpoints_give_nothing() {
        let none = slice(
            "v1",
            "ns",
            "a",
            Some("d"),
            serde_json::json!({"addressType": "IPv4", "endpoints": null, "ports": null}),
        );
        assert!(ready_addresses(&none, "http").is_empty());
        let other = slice(
            "v1",
            "ns",
            "b",
            Some("d"),
            serde_json::json!({"addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"]}], "ports": [{"name": "grpc", "port": 9000}]}),
        );
        assert!(ready_addresses(&other, "http").is_empty());
        let fqdn = slice(
            "v1",
            "ns",
            "c",
            Some("d"),
            serde_json::json!({"addressType": "FQDN", "endpoints": [{"addresses": ["a.example"]}], "ports": [{"name": "http", "port": 80}]}),
        );
        assert!(ready_addresses(&fqdn, "http").is_empty());
    }

    #[test]
    fn tracker_unions_a_services_slices() {
        let mut t = SliceTracker::new("http");
        let ep = |ip: &str| serde_json::json!({"addressType": "IPv4", "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}], "ports": [{"name": "http", "port": 8000}]});
        let key = DeploymentKey::new("ns", "d");
        let s1 = slice("v1", "ns", "d-1", Some("d"), ep("10.0.0.2"));
        let s2 = slice("v1", "ns", "d-2", Some("d"), ep("10.0.0.1"));
        assert_eq!(t.apply(&s1), vec![(key.clone(), vec![addr("10.0.0.2:8000")])]);
        assert_eq!(t.apply(&s2), vec![(key.clone(), vec![addr("10.0.0.1:8000"), addr("10.0.0.2:8000")])]);
        assert_eq!(t.delete(&s1), vec![(key.clone(), vec![addr("10.0.0.1:8000")])]);
        assert_eq!(t.delete(&s1), vec![], "already gone");
        let other = slice("v1", "ns2", "d-1", Some("d"), ep("10.0.0.9"));
        let all = t.replace(vec![s1.clone(), other]);
        assert_eq!(all.len(), 2);
        assert_eq!(all[&key], vec![addr("10.0.0.2:8000")]);
        assert_eq!(all[&DeploymentKey::new("ns2", "d")], vec![addr("10.0.0.9:8000")]);
        let moved = slice("v1", "ns", "d-1", Some("e"), ep("10.0.0.2"));
        assert_eq!(
            t.apply(&moved),
            vec![(key.clone(), vec![]), (DeploymentKey::new("ns", "e"), vec![addr("10.0.0.2:8000")])],
            "a relabelled slice leaves its old deployment"
        );
        let unlabelled = slice("v1", "ns", "d-1", None, ep("10.0.0.2"));
        assert_eq!(t.apply(&unlabelled), vec![(DeploymentKey::new("ns", "e"), vec![])], "losing the label removes it");
    }

    fn md(stopped: bool, phase: Option<DeploymentPhase>) -> ModelDeployment {
        let spec: ModelDeploymentSpec = serde_json::from_value(
            serde_json::json!({"model": {"uri": "s3://b/m.onnx", "format": "onnx"}, "stopped": stopped}),
        )
        .expect("spec");
        let mut md = ModelDeployment::new("d", spec);
        md.metadata.namespace = Some("ns".into());
        md.status = phase.map(|phase| ModelDeploymentStatus {
            phase,
            model_version: Some("0123456789ab".into()),
            ..Default::default()
        });
        md
    }

    #[test]
    fn lifecycle_from_spec_and_phase() {
        assert_eq!(key_of(&md(false, None)), DeploymentKey::new("ns", "d"));
        let cases = [
            (false, None, Lifecycle::Active),
            (false, Some(DeploymentPhase::ScaledToZero), Lifecycle::Active),
            (false, Some(DeploymentPhase::Ready), Lifecycle::Active),
            // Un-stopped, status not caught up yet: serve (and wake).
            (false, Some(DeploymentPhase::Stopped), Lifecycle::Active),
            (true, Some(DeploymentPhase::Ready), Lifecycle::Stopped),
            (false, Some(DeploymentPhase::Expired), Lifecycle::Expired),
            (false, Some(DeploymentPhase::Failed), Lifecycle::Failed),
        ];
        for (stopped, phase, want) in cases {
            assert_eq!(deployment_info(&md(stopped, phase)).lifecycle, want, "{stopped} {phase:?}");
        }
        assert_eq!(
            deployment_info(&md(false, Some(DeploymentPhase::Ready))).model_version.as_deref(),
            Some("0123456789ab")
        );
        assert_eq!(deployment_info(&md(false, None)).model_version, None);
    }

    #[test]
    fn wake_patch_sets_both_annotations() {
        let now = DateTime::parse_from_rfc3339("2025-03-04T05:06:07.891Z").expect("time").with_timezone(&Utc);
        let key = DeploymentKey::new("ns", "d");
        let p = wake_patch(&WakeRequest { key: key.clone(), held: 3, wake: true }, now);
        assert_eq!(
            p,
            serde_json::json!({"metadata": {"annotations": {WAKE_ANNOTATION: "2025-03-04T05:06:07Z", HELD_ANNOTATION: "3"}}})
        );
        let p = wake_patch(&WakeRequest { key, held: 0, wake: false }, now);
        assert_eq!(p, serde_json::json!({"metadata": {"annotations": {HELD_ANNOTATION: "0"}}}));
    }

    #[tokio::test]
    async fn queued_wake_requests_are_coalesced() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (a, b) = (DeploymentKey::new("ns", "a"), DeploymentKey::new("ns", "b"));
        tx.send(WakeRequest { key: a.clone(), held: 2, wake: false }).expect("send");
        tx.send(WakeRequest { key: b.clone(), held: 1, wake: true }).expect("send");
        tx.send(WakeRequest { key: a.clone(), held: 0, wake: false }).expect("send");
        let first = WakeRequest { key: a.clone(), held: 5, wake: true };
        assert_eq!(
            coalesce(first, &mut rx),
            vec![WakeRequest { key: a, held: 0, wake: true }, WakeRequest { key: b, held: 1, wake: true }]
        );
    }
}

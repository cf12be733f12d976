//! The local node: a Node object whose pods run as local processes.
//!
//! Real: the Node object, scheduling by kube-scheduler against its capacity (incl.
//! `nvidia.com/gpu`), pod status as the kubelet reports it, Endpoints readiness, `kubectl logs`.
//! Simulated: containers are processes (images map to local binaries), no image pulls, no
//! network namespaces (each pod gets its own loopback IP, 127.x.y.z), no volume mounts.

mod logs;
mod pod;
pub mod spec;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use spec::{ImageMap, ImageMapping};

/// Node configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Node name.
    pub name: String,
    /// Directory for pod working dirs and logs.
    pub root: PathBuf,
    /// `nvidia.com/gpu` capacity.
    pub gpus: u32,
    /// `nvidia.com/gpu.product` label.
    pub gpu_product: Option<String>,
    /// Image → binary mapping.
    pub images: ImageMap,
    /// Value of [`crate::proc::MARKER_ENV`] for every pod process.
    pub marker: String,
    /// API server URL (for pods' in-cluster kubeconfig).
    pub api_server: String,
    /// CA of the API server (PEM).
    pub ca_pem: String,
    /// Serving certificate of the node's log endpoint (PEM file).
    pub tls_cert: PathBuf,
    /// Its private key (PEM file).
    pub tls_key: PathBuf,
}

/// Number of local NVIDIA GPUs (0 without `nvidia-smi`).
pub fn local_gpu_count() -> u32 {
    std::process::Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.starts_with("GPU ")).count() as u32)
        .unwrap_or(0)
}

/// Product name of the first local GPU, as the NVIDIA GPU feature discovery labels it.
pub fn local_gpu_product() -> Option<String> {
    let o =
        std::process::Command::new("nvidia-smi").args(["--query-gpu=name", "--format=csv,noheader"]).output().ok()?;
    let name = String::from_utf8_lossy(&o.stdout).lines().next()?.trim().replace(' ', "-");
    (o.status.success() && !name.is_empty()).then_some(name)
}

/// State shared by the node's tasks.
pub(crate) struct Ctx {
    pub client: Client,
    pub cfg: NodeConfig,
    pub logs: logs::LogRegistry,
    ips: Mutex<BTreeSet<u32>>,
    ip_prefix: u32,
}

impl Ctx {
    /// A free loopback address for a pod (127.P.x.y).
    pub fn alloc_ip(&self) -> String {
        let mut used = self.ips.lock().unwrap_or_else(|e| e.into_inner());
        let n = (1..65_000u32).find(|n| !used.contains(n) && n % 256 != 0 && n % 256 != 255).unwrap_or(1);
        used.insert(n);
        format!("127.{}.{}.{}", self.ip_prefix, n / 256, n % 256)
    }

    /// Returns a pod IP to the pool.
    pub fn release_ip(&self, ip: &str) {
        let parts: Vec<u32> = ip.split('.').filter_map(|p| p.parse().ok()).collect();
        if parts.len() == 4 {
            self.ips.lock().unwrap_or_else(|e| e.into_inner()).remove(&(parts[2] * 256 + parts[3]));
        }
    }
}

/// A running local node.
pub struct LocalNode {
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for LocalNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalNode").finish()
    }
}

impl LocalNode {
    /// Registers the Node and starts running its pods.
    pub async fn start(client: Client, cfg: NodeConfig) -> Result<LocalNode> {
        std::fs::create_dir_all(cfg.root.join("pods"))?;
        let ip_prefix = 100 + cfg.marker.bytes().fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b))) % 150;
        let ctx = Arc::new(Ctx {
            client: client.clone(),
            cfg,
            logs: logs::LogRegistry::default(),
            ips: Mutex::new(BTreeSet::new()),
            ip_prefix,
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (log_port, log_task) = logs::serve(ctx.clone(), shutdown_rx.clone()).await?;
        register(&ctx, log_port).await.context("registering the Node")?;
        let hb = tokio::spawn(heartbeat(ctx.clone(), shutdown_rx.clone()));
        let pods = tokio::spawn(run_pods(ctx.clone(), shutdown_rx));
        Ok(LocalNode { shutdown, tasks: vec![log_task, hb, pods] })
    }

    /// Stops every pod process and the node's tasks.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
    }
}

fn meminfo_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(8 * 1024 * 1024)
}

async fn register(ctx: &Ctx, log_port: u16) -> Result<()> {
    let cfg = &ctx.cfg;
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let mut labels = json!({
        "kubernetes.io/hostname": cfg.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        "ocellus.dev/local-node": "true",
        "nvidia.com/gpu.count": cfg.gpus.to_string(),
    });
    if let Some(p) = &cfg.gpu_product {
        labels["nvidia.com/gpu.product"] = json!(p);
    }
    let node: Node = serde_json::from_value(json!({"metadata": {"name": cfg.name, "labels": labels}}))?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let capacity = json!({
        "cpu": cpus.to_string(),
        "memory": format!("{}Ki", meminfo_kib()),
        "pods": "110",
        "ephemeral-storage": "100Gi",
        "nvidia.com/gpu": cfg.gpus.to_string(),
    });
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let cond = |t: &str, s: &str, reason: &str| json!({"type": t, "status": s, "reason": reason, "lastHeartbeatTime": now, "lastTransitionTime": now});
    let status = json!({"status": {
        "capacity": capacity, "allocatable": capacity,
        "conditions": [
            cond("Ready", "True", "KubeletReady"),
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID"),
        ],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": cfg.name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": log_port}},
        "nodeInfo": {
            "machineID": cfg.marker, "systemUUID": cfg.marker, "bootID": cfg.marker,
            "kernelVersion": "local", "osImage": "ocellus local node", "containerRuntimeVersion": "ocellus-process://0.1",
            "kubeletVersion": "v1.20.2", "kubeProxyVersion": "v1.20.2", "operatingSystem": "linux",
            "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        },
    }});
    nodes.patch_status(&cfg.name, &PatchParams::default(), &Patch::Strategic(status)).await?;
    // Admission taints new nodes `not-ready`; without the node-lifecycle controller the node clears it.
    nodes.patch(&cfg.name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"taints": null}}))).await?;
    Ok(())
}

async fn heartbeat(ctx: Arc<Ctx>, mut shutdown: watch::Receiver<bool>) {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": now}]}});
        if let Err(e) = nodes.patch_status(&ctx.cfg.name, &PatchParams::default(), &Patch::Strategic(patch)).await {
            tracing::warn!(error = %e, "node heartbeat failed");
        }
    }
}

/// Watches the pods bound to this node and runs one task per pod.
async fn run_pods(ctx: Arc<Ctx>, mut shutdown: watch::Receiver<bool>) {
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.cfg.name));
    let mut stream = watcher(pods, cfg).boxed();
    let mut running: HashMap<String, (watch::Sender<Option<Pod>>, JoinHandle<()>)> = HashMap::new();
    let mut seen_in_init: Option<BTreeSet<String>> = None;
    loop {
        let ev = tokio::select! {
            _ = shutdown.changed() => break,
            ev = stream.next() => ev,
        };
        let Some(ev) = ev else { break };
        let apply = |pod: Pod, running: &mut HashMap<_, (watch::Sender<Option<Pod>>, JoinHandle<()>)>| {
            let uid = pod.uid().unwrap_or_default();
            match running.get(&uid) {
                Some((tx, _)) => {
                    let _ = tx.send(Some(pod));
                }
                None => {
                    let (tx, rx) = watch::channel(Some(pod.clone()));
                    let h = tokio::spawn(pod::run(ctx.clone(), pod, rx, shutdown.clone()));
                    running.insert(uid, (tx, h));
                }
            }
        };
        match ev {
            Ok(watcher::Event::Init) => seen_in_init = Some(BTreeSet::new()),
            Ok(watcher::Event::InitApply(p)) => {
                if let Some(s) = seen_in_init.as_mut() {
                    s.insert(p.uid().unwrap_or_default());
                }
                apply(p, &mut running);
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(seen) = seen_in_init.take() {
                    for (uid, (tx, _)) in running.iter() {
                        if !seen.contains(uid) {
                            let _ = tx.send(None);
                        }
                    }
                }
            }
            Ok(watcher::Event::Apply(p)) => apply(p, &mut running),
            Ok(watcher::Event::Delete(p)) => {
                if let Some((tx, _)) = running.get(&p.uid().unwrap_or_default()) {
                    let _ = tx.send(None);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "pod watch error");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        running.retain(|_, (_, h)| !h.is_finished());
    }
    // Shutdown: every pod task stops its processes.
    for (_, (_, h)) in running {
        let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
    }
}

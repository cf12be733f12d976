//! A real Kubernetes control plane on loopback: etcd, kube-apiserver (TLS, token auth, RBAC,
//! service-account token signing), kube-controller-manager and kube-scheduler, plus the
//! process-running [`crate::node`]. Everything stops when the [`LocalCluster`] is dropped, and
//! dies with the process in any case (see [`crate::proc`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use crate::node::{ImageMap, LocalNode, NodeConfig};
use crate::proc::{self, MARKER_ENV, Spec};
use crate::require_tool;

/// Options of a local cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// GPUs the node advertises (`nvidia.com/gpu`); `None` counts the local GPUs.
    pub gpus: Option<u32>,
    /// Value of the node label `nvidia.com/gpu.product`.
    pub gpu_product: Option<String>,
    /// Image → local binary mapping for the node.
    pub images: ImageMap,
    /// Keep the state directory after drop (for debugging).
    pub keep_dir: bool,
    /// Client QPS of kube-controller-manager and kube-scheduler (burst twice that); `None`
    /// keeps Kubernetes' defaults (20 and 50). Benchmarks raise it as large clusters do.
    pub control_plane_qps: Option<u32>,
}

/// The stdout of a command that must have succeeded; panics with its output otherwise.
pub fn stdout_ok(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "command failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A running local cluster.
pub struct LocalCluster {
    id: String,
    dir: PathBuf,
    kubeconfig: PathBuf,
    server: String,
    procs: Mutex<Vec<(String, Child)>>,
    node: Option<LocalNode>,
    runtime: Option<tokio::runtime::Runtime>,
    keep_dir: bool,
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster").field("id", &self.id).field("server", &self.server).finish()
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().context("running openssl")?;
    if !out.status.success() {
        bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// CA, API-server serving certificate and service-account signing key.
fn make_pki(dir: &Path) -> Result<()> {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "30",
            "-subj",
            "/CN=ocellus-local-ca",
        ],
    )?;
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "apiserver.key",
            "-out",
            "apiserver.csr",
            "-subj",
            "/CN=kube-apiserver",
        ],
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "apiserver.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "apiserver.crt",
            "-days",
            "30",
            "-extfile",
            "san.ext",
        ],
    )?;
    // The node's serving certificate (the API server dials it for `kubectl logs`).
    std::fs::write(
        dir.join("kubelet.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:local-node\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "kubelet.key",
            "-out",
            "kubelet.csr",
            "-subj",
            "/CN=system:node:local-node",
        ],
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "kubelet.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "kubelet.crt",
            "-days",
            "30",
            "-extfile",
            "kubelet.ext",
        ],
    )?;
    openssl(dir, &["genrsa", "-out", "sa.key", "2048"])?;
    openssl(dir, &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
    Ok(())
}

fn random_token() -> String {
    let mut buf = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut buf);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

impl LocalCluster {
    /// Starts a cluster and waits until a pod could be scheduled on its node.
    pub fn start(opts: ClusterOptions) -> Result<LocalCluster> {
        let started = Instant::now();
        let id = random_token()[..12].to_string();
        let dir = std::env::temp_dir().join(format!("ocellus-cluster-{id}"));
        std::fs::create_dir_all(&dir)?;
        let bin = |name: &str| -> PathBuf { require_tool(name) };
        make_pki(&dir)?;
        let token = random_token();
        std::fs::write(dir.join("tokens.csv"), format!("{token},ocellus-admin,ocellus-admin,\"system:masters\"\n"))?;

        let mut cluster = LocalCluster {
            id: id.clone(),
            dir: dir.clone(),
            kubeconfig: dir.join("kubeconfig"),
            server: String::new(),
            procs: Mutex::new(vec![]),
            node: None,
            runtime: None,
            keep_dir: opts.keep_dir,
        };
        let env: BTreeMap<String, String> =
            [(MARKER_ENV.to_string(), id.clone()), ("PATH".to_string(), std::env::var("PATH").unwrap_or_default())]
                .into();

        // etcd
        let (etcd_port, peer_port) = (free_port()?, free_port()?);
        cluster.spawn(
            "etcd",
            bin("etcd"),
            vec![
                "--name=local".into(),
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
                format!("--initial-cluster=local=http://127.0.0.1:{peer_port}"),
                "--log-level=warn".into(),
            ],
            &env,
        )?;
        wait_http(&format!("http://127.0.0.1:{etcd_port}/health"), None, Duration::from_secs(20))
            .context("etcd did not become healthy")?;

        // kube-apiserver
        let api_port = free_port()?;
        let d = dir.display();
        cluster.spawn(
            "kube-apiserver",
            bin("kube-apiserver"),
            vec![
                format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={api_port}"),
                "--insecure-port=0".into(),
                format!("--tls-cert-file={d}/apiserver.crt"),
                format!("--tls-private-key-file={d}/apiserver.key"),
                format!("--client-ca-file={d}/ca.crt"),
                format!("--token-auth-file={d}/tokens.csv"),
                "--authorization-mode=Node,RBAC".into(),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                format!("--service-account-key-file={d}/sa.pub"),
                format!("--service-account-signing-key-file={d}/sa.key"),
                "--api-audiences=https://kubernetes.default.svc".into(),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                "--allow-privileged=true".into(),
                "--kubelet-preferred-address-types=InternalIP".into(),
                format!("--cert-dir={d}/apiserver-certs"),
                "--v=0".into(),
            ],
            &env,
        )?;
        cluster.server = format!("https://127.0.0.1:{api_port}");
        wait_http(&format!("{}/readyz", cluster.server), Some(&token), Duration::from_secs(60))
            .context("kube-apiserver did not become ready")?;

        let ca = std::fs::read_to_string(dir.join("ca.crt"))?;
        write_kubeconfig(&cluster.kubeconfig, &cluster.server, &ca, &token)?;
        let kc = cluster.kubeconfig.display().to_string();

        let qps: Vec<String> = opts
            .control_plane_qps
            .map(|q| vec![format!("--kube-api-qps={q}"), format!("--kube-api-burst={}", q * 2)])
            .unwrap_or_default();
        cluster.spawn("kube-controller-manager", bin("kube-controller-manager"), vec![
            format!("--kubeconfig={kc}"),
            format!("--authentication-kubeconfig={kc}"),
            format!("--authorization-kubeconfig={kc}"),
            format!("--service-account-private-key-file={d}/sa.key"),
            format!("--root-ca-file={d}/ca.crt"),
            "--use-service-account-credentials=true".into(),
            "--leader-elect=false".into(),
            "--controllers=*,-nodeipam,-nodelifecycle,-ttl,-cloud-node-lifecycle,-route,-service,-persistentvolume-binder,-attachdetach".into(),
            "--port=0".into(),
            "--secure-port=0".into(),
            "--concurrent-gc-syncs=5".into(),
        ].into_iter().chain(qps.clone()).collect(), &env)?;
        cluster.spawn(
            "kube-scheduler",
            bin("kube-scheduler"),
            vec![
                format!("--kubeconfig={kc}"),
                format!("--authentication-kubeconfig={kc}"),
                format!("--authorization-kubeconfig={kc}"),
                "--leader-elect=false".into(),
                "--port=0".into(),
                "--secure-port=0".into(),
            ]
            .into_iter()
            .chain(qps)
            .collect(),
            &env,
        )?;

        // The node runs on a runtime owned by the cluster, so it outlives every test's runtime.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("ocellus-node")
            .build()?;
        let node_cfg = NodeConfig {
            name: "local-node".into(),
            root: dir.join("node"),
            gpus: opts.gpus.unwrap_or_else(crate::node::local_gpu_count),
            gpu_product: opts.gpu_product.clone().or_else(crate::node::local_gpu_product),
            images: opts.images.clone(),
            marker: id.clone(),
            api_server: cluster.server.clone(),
            ca_pem: ca.clone(),
            tls_cert: dir.join("kubelet.crt"),
            tls_key: dir.join("kubelet.key"),
        };
        let kubeconfig = cluster.kubeconfig.clone();
        let node = runtime.block_on(async move {
            let client = client_from(&kubeconfig).await?;
            LocalNode::start(client, node_cfg).await
        })?;
        cluster.node = Some(node);
        cluster.runtime = Some(runtime);

        // Ready when the controllers work (the default ServiceAccount exists) and the node is schedulable.
        cluster.block_on(async {
            let client = cluster.client().await?;
            let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
            let nodes: Api<Node> = Api::all(client);
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let sa = sas.get_opt("default").await?.is_some();
                let node_ok = nodes
                    .get_opt("local-node")
                    .await?
                    .is_some_and(|n| n.spec.as_ref().and_then(|s| s.taints.as_ref()).is_none_or(|t| t.is_empty()));
                if sa && node_ok {
                    return Ok::<_, anyhow::Error>(());
                }
                if Instant::now() > deadline {
                    bail!("cluster not ready after 60 s (default ServiceAccount: {sa}, node schedulable: {node_ok})");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })?;
        eprintln!(
            "[ocellus] local cluster {id} ready in {:.1} s at {}",
            started.elapsed().as_secs_f64(),
            cluster.server
        );
        Ok(cluster)
    }

    fn spawn(&mut self, name: &str, program: PathBuf, args: Vec<String>, env: &BTreeMap<String, String>) -> Result<()> {
        let log = self.dir.join(format!("{name}.log"));
        let child = proc::spawn(Spec {
            program,
            args,
            env: env.clone(),
            clear_env: true,
            cwd: Some(self.dir.clone()),
            log: Some(log),
        })
        .with_context(|| format!("starting {name}"))?;
        self.procs.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push((name.to_string(), child));
        // Fail fast with the component's log if it exits immediately.
        std::thread::sleep(Duration::from_millis(50));
        self.check_alive()?;
        Ok(())
    }

    /// Errors with the log tail of the first control-plane component that exited.
    pub fn check_alive(&self) -> Result<()> {
        let mut procs = self.procs.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        for (name, child) in procs.iter_mut() {
            if let Ok(Some(st)) = child.try_wait() {
                let log = std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
                bail!("{name} exited with {st}:\n{}", tail.join("\n"));
            }
        }
        Ok(())
    }

    /// Runs a future on the cluster's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        match &self.runtime {
            Some(rt) => rt.block_on(f),
            None => tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f),
        }
    }

    /// A new admin client (create one per test runtime).
    pub async fn client(&self) -> Result<Client> {
        client_from(&self.kubeconfig).await
    }

    /// The cluster id (value of [`MARKER_ENV`] in every process it started).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Path of the admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Runs the cached `kubectl` against this cluster with the admin kubeconfig.
    pub fn kubectl(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(require_tool("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .expect("run kubectl")
    }

    /// The API server URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Creates a fresh namespace `<prefix>-<random>` and returns its name.
    pub async fn namespace(&self, client: &Client, prefix: &str) -> Result<String> {
        let name = format!("{prefix}-{}", &random_token()[..6]);
        let api: Api<Namespace> = Api::all(client.clone());
        api.create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?)
            .await?;
        // Pods need the namespace's default ServiceAccount.
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
        let deadline = Instant::now() + Duration::from_secs(30);
        // 1.20's ServiceAccount admission also needs the account's token Secret.
        while sas.get_opt("default").await?.is_none_or(|sa| sa.secrets.is_none_or(|s| s.is_empty())) {
            if Instant::now() > deadline {
                bail!("no default ServiceAccount in {name}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(name)
    }

    /// Deletes a namespace (best effort).
    pub async fn delete_namespace(&self, client: &Client, name: &str) {
        let api: Api<Namespace> = Api::all(client.clone());
        let _ = api.delete(name, &DeleteParams::default()).await;
    }

    /// Stops the node (terminating its pods) and the control plane.
    pub fn stop(&mut self) {
        if let (Some(node), Some(rt)) = (self.node.take(), self.runtime.as_ref()) {
            rt.block_on(node.shutdown());
        }
        if let Ok(mut procs) = self.procs.lock() {
            // Reverse order: scheduler, controller-manager, apiserver, etcd.
            while let Some((_, mut child)) = procs.pop() {
                proc::stop(&mut child, Duration::from_secs(5));
            }
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Builds a client from a kubeconfig file.
pub async fn client_from(kubeconfig: &Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

fn write_kubeconfig(path: &Path, server: &str, ca_pem: &str, token: &str) -> Result<()> {
    use base64::Engine;
    let encode = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: local\n  context:\n    cluster: local\n    user: admin\n    namespace: default\ncurrent-context: local\n",
        encode(ca_pem.as_bytes())
    );
    std::fs::write(path, text)?;
    Ok(())
}

/// Polls `url` until it answers 200 (TLS verification off: only used before the kubeconfig exists).
fn wait_http(url: &str, token: Option<&str>, timeout: Duration) -> Result<()> {
    let client = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(2))
        .build()?;
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        let mut req = client.get(url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        match req.send() {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => last = format!("HTTP {}", r.status()),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{url}: {last}")
}

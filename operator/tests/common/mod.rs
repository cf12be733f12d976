//! What the operator's cluster tests share: our binaries run as processes against the local
//! cluster, the image map that runs the trainer and predictor binaries as pods, the platform
//! bucket and the namespace's S3 Secret.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::{Child, Command};

use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::{Api, Client};
use ocellus_storage::s3::Store;
use ocellus_tests::cluster::{ClusterOptions, LocalCluster, stdout_ok};
use ocellus_tests::node::{ImageMap, ImageMapping};
use ocellus_tests::s3::{ACCESS_KEY, S3Server, SECRET_KEY};
use ocellus_tests::{repo_root, workspace_binary};

pub const TRAINER_IMAGE: &str = "ghcr.io/ocellus-dev/ocellus-trainer";
pub const PREDICTOR_IMAGE: &str = "ghcr.io/ocellus-dev/ocellus-predictor";
pub const BUCKET: &str = "ocellus";

/// One of our binaries run as a process against the cluster, its output in a log file under the
/// temp dir; killed on drop.
pub struct Process {
    pub child: Child,
    /// The loopback port it serves on (`/metrics`, or the gateway).
    pub port: u16,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Starts `binary` with only PATH, KUBECONFIG and `env` (`{port}` in a value is replaced by a
    /// free port), logging to `<log>-<pid>.log`.
    pub fn start(c: &LocalCluster, binary: &str, log: &str, env: &[(&str, String)]) -> Process {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
        let file = std::fs::File::create(std::env::temp_dir().join(format!("{log}-{}.log", std::process::id())))
            .expect("log file");
        let mut cmd = Command::new(workspace_binary(binary));
        cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).env("KUBECONFIG", c.kubeconfig());
        for (k, v) in env {
            cmd.env(k, v.replace("{port}", &port.to_string()));
        }
        let child = cmd.stdout(file.try_clone().expect("log")).stderr(file).spawn().expect("start the process");
        Process { child, port }
    }

    /// `ocellus_operator_reconciles_total` by controller, from an operator's `/metrics` (empty
    /// while it does not lead: the counters appear with the first reconcile).
    pub async fn reconciles(&self) -> BTreeMap<String, f64> {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        let text = reqwest::get(&url).await.expect("metrics").text().await.expect("text");
        text.lines()
            .filter_map(|l| l.strip_prefix("ocellus_operator_reconciles_total{controller=\""))
            .filter_map(|l| {
                let (name, rest) = l.split_once("\"} ")?;
                Some((name.to_string(), rest.trim().parse().ok()?))
            })
            .collect()
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills it with SIGKILL, as a node does to a container past its grace period.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the operator binary as replica `identity` (its Lease identity starts with it), with a
/// lease of `lease_seconds`.
pub fn start_operator_with_lease(c: &LocalCluster, s3: &S3Server, identity: &str, lease_seconds: u32) -> Process {
    let env = [
        ("OCELLUS_METRICS_ADDR", "127.0.0.1:{port}".to_string()),
        ("OCELLUS_LOG", "info,ocellus_operator=debug".into()),
        ("OCELLUS_TRAINER_IMAGE", format!("{TRAINER_IMAGE}:test")),
        ("OCELLUS_PREDICTOR_IMAGE", format!("{PREDICTOR_IMAGE}:test")),
        ("OCELLUS_S3_ENDPOINT", s3.endpoint().to_string()),
        ("OCELLUS_S3_BUCKET", BUCKET.into()),
        ("OCELLUS_S3_SECRET", "ocellus-s3".into()),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
        ("POD_NAMESPACE", "default".into()),
        ("POD_NAME", identity.into()),
        ("OCELLUS_LEASE_DURATION", lease_seconds.to_string()),
    ];
    Process::start(c, "ocellus-operator", &format!("ocellus-operator-{identity}"), &env)
}

/// Starts the operator binary with a 4 s lease.
pub fn start_operator(c: &LocalCluster, s3: &S3Server, identity: &str) -> Process {
    start_operator_with_lease(c, s3, identity, 4)
}

/// Makes the platform bucket and the bucket of source archives (`ocellus-demo`); returns the
/// latter.
pub async fn buckets(s3: &S3Server) -> Store {
    let src = Store::new(&s3.config(), "ocellus-demo");
    src.ensure_bucket().await.expect("bucket");
    Store::new(&s3.config(), BUCKET).ensure_bucket().await.expect("bucket");
    src
}

/// The Secret the Jobs' pods read S3 credentials from.
pub async fn s3_secret(client: &Client, ns: &str) {
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "ocellus-s3"},
        "stringData": {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY},
    }))
    .expect("secret");
    Api::<Secret>::namespaced(client.clone(), ns).create(&PostParams::default(), &secret).await.expect("create secret");
}

/// The local cluster (one node with one `NVIDIA-Test-GPU`) running the trainer and predictor
/// images as our binaries, with the CRDs installed. Both images set ORT_DYLIB_PATH to the ONNX
/// Runtime they ship (their Dockerfiles): the trainer calibrates and gates INT8 exports in it,
/// the predictor serves with it.
pub fn cluster_with_crds() -> LocalCluster {
    let ort = ocellus_tests::cache_dir().join("lib/libonnxruntime.so").display().to_string();
    let mapping = |image: &str, binary: &str| ImageMapping {
        image: image.into(),
        binary: Some(workspace_binary(binary)),
        env: BTreeMap::from([("ORT_DYLIB_PATH".to_string(), ort.clone())]),
    };
    let images = ImageMap {
        images: vec![mapping(TRAINER_IMAGE, "ocellus-trainer"), mapping(PREDICTOR_IMAGE, "ocellus-predictor")],
    };
    let c = LocalCluster::start(ClusterOptions {
        gpus: Some(1),
        gpu_product: Some("NVIDIA-Test-GPU".into()),
        images,
        ..Default::default()
    })
    .expect("local cluster");
    stdout_ok(&c.kubectl(&["apply", "--validate=false", "-f", &repo_root().join("crds/yaml").display().to_string()]));
    stdout_ok(&c.kubectl(&["wait", "--for=condition=Established", "--timeout=60s", "crd", "--all"]));
    c
}

//! `ocellus-localcluster`: runs the local cluster in the foreground until SIGTERM/Ctrl-C.
//! Writes the admin kubeconfig to `--kubeconfig` once the cluster is ready.

use std::path::PathBuf;

use clap::Parser;
use ocellus_tests::cluster::{ClusterOptions, LocalCluster};
use ocellus_tests::node::ImageMap;

#[derive(Parser, Debug)]
#[command(about = "A real Kubernetes control plane on loopback with a process-running node")]
struct Args {
    /// Where to write the admin kubeconfig.
    #[arg(long, env = "OCELLUS_KUBECONFIG", default_value = "kubeconfig")]
    kubeconfig: PathBuf,
    /// Image → binary mapping (YAML: `images: [{image, binary}]`).
    #[arg(long, env = "OCELLUS_IMAGE_MAP")]
    image_map: Option<PathBuf>,
    /// GPUs the node advertises (default: count local NVIDIA GPUs).
    #[arg(long, env = "OCELLUS_NODE_GPUS")]
    gpus: Option<u32>,
    /// `nvidia.com/gpu.product` label of the node.
    #[arg(long, env = "OCELLUS_NODE_GPU_PRODUCT")]
    gpu_product: Option<String>,
    /// Client QPS of kube-controller-manager and kube-scheduler (Kubernetes' defaults when unset).
    #[arg(long, env = "OCELLUS_CONTROL_PLANE_QPS")]
    control_plane_qps: Option<u32>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let images = match &args.image_map {
        Some(p) => ImageMap::from_file(p)?,
        None => ImageMap::default(),
    };
    let cluster = LocalCluster::start(ClusterOptions {
        gpus: args.gpus,
        gpu_product: args.gpu_product,
        images,
        keep_dir: false,
        control_plane_qps: args.control_plane_qps,
    })?;
    let tmp = args.kubeconfig.with_extension("tmp");
    std::fs::copy(cluster.kubeconfig(), &tmp)?;
    std::fs::rename(&tmp, &args.kubeconfig)?;
    say(&format!("ready: kubeconfig {} (cluster {})", args.kubeconfig.display(), cluster.id()));
    cluster.block_on(ocellus_tests::stop_signal())?;
    say("stopping");
    drop(cluster);
    let _ = std::fs::remove_file(&args.kubeconfig);
    Ok(())
}

/// Prints a line; a closed stdout (the reader went away) is not a reason to skip the cleanup.
fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

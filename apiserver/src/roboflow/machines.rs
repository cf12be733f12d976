//! Machine types: what a Roboflow deployment's `machine_type` can name, from the cluster's
//! nodes (pure).
//!
//! `cpu` is always offered; `gpu` (any GPU model) when some node has allocatable
//! `nvidia.com/gpu`; and `gpu-<product>` for each GPU model those nodes name in their
//! `nvidia.com/gpu.product` label (GPU feature discovery), lowercased. Roboflow's own names
//! are accepted as aliases: `dev-cpu`/`prod-cpu` → `cpu`, `dev-gpu`/`prod-gpu` → `gpu`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use ocellus_crds::{GpuRequest, PredictorResources};
use serde::Serialize;

/// The node label GPU feature discovery sets to the GPU model.
pub const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";
/// The extended resource of NVIDIA's device plugin.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// One machine type, as `/machine_types` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct MachineType {
    /// The name `/add` takes.
    pub machine_type: String,
    /// What a predictor pod of this type gets.
    pub description: String,
    /// CPU cores per pod.
    pub cpu: f64,
    /// Memory per pod in GiB.
    pub memory_gi: f64,
    /// GPUs per pod.
    pub gpu_count: i32,
    /// The GPU model the pod is placed on (`nvidia.com/gpu.product`); absent: any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_product: Option<String>,
    /// GPUs (or, for `cpu`, nodes) allocatable in the cluster now.
    pub available: i64,
}

impl MachineType {
    /// The predictor resources of a pod of this type.
    pub fn resources(&self) -> PredictorResources {
        PredictorResources {
            cpu: format!("{}m", (self.cpu * 1000.0).round() as i64),
            memory: format!("{}Mi", (self.memory_gi * 1024.0).round() as i64),
            gpu: GpuRequest { count: self.gpu_count, product: self.gpu_product.clone(), mig_profile: None },
        }
    }
}

/// Allocatable GPUs of a node (0 when it has none).
fn gpus(node: &Node) -> i64 {
    node.status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .and_then(|a| a.get(GPU_RESOURCE))
        .and_then(|q| q.0.parse::<i64>().ok())
        .unwrap_or(0)
}

/// The machine types `nodes` offer, `cpu` first, then `gpu`, then one per GPU model by name.
pub fn machine_types<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> Vec<MachineType> {
    let (mut node_count, mut any_gpu) = (0i64, 0i64);
    let mut products: BTreeMap<String, i64> = BTreeMap::new();
    for n in nodes {
        node_count += 1;
        let g = gpus(n);
        if g == 0 {
            continue;
        }
        any_gpu += g;
        if let Some(p) = n.metadata.labels.as_ref().and_then(|l| l.get(GPU_PRODUCT_LABEL)) {
            *products.entry(p.clone()).or_default() += g;
        }
    }
    let mut out = vec![MachineType {
        machine_type: "cpu".into(),
        description: "1 CPU core and 2 GiB of memory per replica, no GPU (alias: dev-cpu, prod-cpu)".into(),
        cpu: 1.0,
        memory_gi: 2.0,
        gpu_count: 0,
        gpu_product: None,
        available: node_count,
    }];
    if any_gpu > 0 {
        out.push(gpu_type("gpu".into(), None, any_gpu));
    }
    for (product, n) in products {
        out.push(gpu_type(format!("gpu-{}", product.to_lowercase()), Some(product), n));
    }
    out
}

fn gpu_type(name: String, product: Option<String>, available: i64) -> MachineType {
    let model = product.as_deref().map(|p| format!("an {p}")).unwrap_or_else(|| "any GPU model".into());
    let alias = if product.is_none() { " (alias: dev-gpu, prod-gpu)" } else { "" };
    MachineType {
        machine_type: name,
        description: format!("1 GPU ({model}), 4 CPU cores and 16 GiB of memory per replica{alias}"),
        cpu: 4.0,
        memory_gi: 16.0,
        gpu_count: 1,
        gpu_product: product,
        available,
    }
}

/// The machine type `name` (or its Roboflow alias) among `types`.
pub fn find<'a>(types: &'a [MachineType], name: &str) -> Option<&'a MachineType> {
    let name = match name {
        "dev-cpu" | "prod-cpu" => "cpu",
        "dev-gpu" | "prod-gpu" => "gpu",
        n => n,
    };
    types.iter().find(|t| t.machine_type == name)
}

/// The machine type of a deployment's resources, for listing deployments however they were
/// made.
pub fn of(resources: &PredictorResources) -> String {
    match (resources.gpu.count, &resources.gpu.product) {
        (0, _) => "cpu".into(),
        (_, None) => "gpu".into(),
        (_, Some(p)) => format!("gpu-{}", p.to_lowercase()),
    }
}

/// A Node with `gpus` allocatable GPUs of `product`, for tests.
#[cfg(test)]
pub(crate) fn tests_node(name: &str, gpus: i64, product: Option<&str>) -> Node {
    use k8s_openapi::api::core::v1::NodeStatus;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    let mut n = Node::default();
    n.metadata.name = Some(name.into());
    if let Some(p) = product {
        n.metadata.labels = Some([(GPU_PRODUCT_LABEL.to_string(), p.to_string())].into());
    }
    let mut alloc = BTreeMap::from([("cpu".to_string(), Quantity("8".into()))]);
    if gpus > 0 {
        alloc.insert(GPU_RESOURCE.into(), Quantity(gpus.to_string()));
    }
    n.status = Some(NodeStatus { allocatable: Some(alloc), ..Default::default() });
    n
}

#[cfg(test)]
mod tests {
    use super::tests_node as node;
    use super::*;

    #[test]
    fn a_cpu_only_cluster_offers_cpu() {
        let nodes = [node("a", 0, None), node("b", 0, None)];
        let t = machine_types(&nodes);
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].machine_type.as_str(), t[0].available, t[0].gpu_count), ("cpu", 2, 0));
    }

    #[test]
    fn gpu_products_become_types_and_count_their_gpus() {
        let nodes = [
            node("a", 8, Some("NVIDIA-H200")),
            node("b", 1, Some("NVIDIA-L4")),
            node("c", 2, Some("NVIDIA-H200")),
            node("d", 0, None),
        ];
        let t = machine_types(&nodes);
        let names: Vec<_> = t.iter().map(|m| (m.machine_type.as_str(), m.available)).collect();
        assert_eq!(names, [("cpu", 4), ("gpu", 11), ("gpu-nvidia-h200", 10), ("gpu-nvidia-l4", 1)]);
        let h200 = find(&t, "gpu-nvidia-h200").expect("h200");
        let r = h200.resources();
        assert_eq!((r.cpu.as_str(), r.memory.as_str(), r.gpu.count), ("4000m", "16384Mi", 1));
        assert_eq!(r.gpu.product.as_deref(), Some("NVIDIA-H200"));
        assert_eq!(of(&r), "gpu-nvidia-h200");
    }

    #[test]
    fn roboflow_names_are_aliases() {
        let t = machine_types(&[node("a", 1, Some("X"))]);
        assert_eq!(find(&t, "dev-gpu").map(|m| m.machine_type.as_str()), Some("gpu"));
        assert_eq!(find(&t, "prod-cpu").map(|m| m.machine_type.as_str()), Some("cpu"));
        assert!(find(&t, "tpu").is_none());
        let cpu_only = machine_types(&[node("a", 0, None)]);
        assert!(find(&cpu_only, "dev-gpu").is_none(), "no GPU type without GPU nodes");
        assert_eq!(of(&find(&cpu_only, "cpu").expect("cpu").resources()), "cpu");
    }
}

//! What the chart tells the operator (flags, each with an environment variable): the images it
//! puts into Jobs, where the platform bucket is, and the GPU defaults of the cluster.

use std::collections::BTreeMap;

use clap::Args;
use k8s_openapi::api::core::v1::Toleration;

/// Settings of the Jobs the operator creates.
#[derive(Args, Clone, Debug)]
pub struct WorkloadConfig {
    /// Image of the trainer (ingest, freeze, train and export Jobs).
    #[arg(long, env = "OCELLUS_TRAINER_IMAGE", default_value = "ghcr.io/ocellus-dev/ocellus-trainer:latest")]
    pub trainer_image: String,
    /// Image of the predictor (the pods of ModelDeployments).
    #[arg(long, env = "OCELLUS_PREDICTOR_IMAGE", default_value = "ghcr.io/ocellus-dev/ocellus-predictor:latest")]
    pub predictor_image: String,
    /// Pull policy of the workload images (`IfNotPresent`, `Always`, `Never`).
    #[arg(long, env = "OCELLUS_IMAGE_PULL_POLICY", default_value = "IfNotPresent")]
    pub image_pull_policy: String,
    /// Endpoint URL of the S3-compatible store; empty for AWS S3.
    #[arg(long, env = "OCELLUS_S3_ENDPOINT", default_value = "")]
    pub s3_endpoint: String,
    /// Region of the platform bucket.
    #[arg(long, env = "OCELLUS_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    /// The platform bucket: datasets, checkpoints and artifacts live under `<namespace>/...` in it.
    #[arg(long, env = "OCELLUS_S3_BUCKET", default_value = "ocellus")]
    pub s3_bucket: String,
    /// Path-style S3 addressing (MinIO and most self-hosted stores).
    #[arg(long, env = "OCELLUS_S3_FORCE_PATH_STYLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub s3_force_path_style: bool,
    /// Name of the Secret (keys `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`) that workload pods
    /// read their S3 credentials from, in their own namespace. The operator only names it.
    #[arg(long, env = "OCELLUS_S3_SECRET", default_value = "ocellus-s3")]
    pub s3_secret: String,
    /// Extended resource requested for whole GPUs.
    #[arg(long, env = "OCELLUS_GPU_RESOURCE", default_value = "nvidia.com/gpu")]
    pub gpu_resource: String,
    /// RuntimeClass for GPU pods when the spec names none; empty for the node's default.
    #[arg(long, env = "OCELLUS_GPU_RUNTIME_CLASS", default_value = "")]
    pub gpu_runtime_class: String,
    /// Tolerations added to GPU pods, as JSON (the chart's `gpu.tolerations`).
    #[arg(long, env = "OCELLUS_GPU_TOLERATIONS", default_value = "[]", value_parser = parse_tolerations)]
    pub gpu_tolerations: Tolerations,
    /// Node selector added to GPU pods, as a JSON object (the chart's `gpu.nodeSelector`).
    #[arg(long, env = "OCELLUS_GPU_NODE_SELECTOR", default_value = "{}", value_parser = parse_selector)]
    pub gpu_node_selector: Selector,
}

/// Tolerations parsed from JSON (a newtype so clap treats the list as one value).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tolerations(pub Vec<Toleration>);

/// A node selector parsed from JSON.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selector(pub BTreeMap<String, String>);

fn parse_tolerations(s: &str) -> Result<Tolerations, String> {
    let s = if s.trim().is_empty() || s.trim() == "null" { "[]" } else { s };
    serde_json::from_str(s).map(Tolerations).map_err(|e| format!("tolerations must be a JSON list: {e}"))
}

fn parse_selector(s: &str) -> Result<Selector, String> {
    let s = if s.trim().is_empty() || s.trim() == "null" { "{}" } else { s };
    serde_json::from_str(s).map(Selector).map_err(|e| format!("the node selector must be a JSON object: {e}"))
}

impl WorkloadConfig {
    /// The platform bucket's `s3://` URI of `key`.
    pub fn uri(&self, key: &str) -> String {
        format!("s3://{}/{}", self.s3_bucket, key.trim_start_matches('/'))
    }

    /// Settings for tests and examples: the given image and bucket, no GPU defaults.
    pub fn for_tests(trainer_image: &str, bucket: &str) -> WorkloadConfig {
        WorkloadConfig {
            trainer_image: trainer_image.into(),
            predictor_image: "ghcr.io/ocellus-dev/ocellus-predictor:test".into(),
            image_pull_policy: "IfNotPresent".into(),
            s3_endpoint: "http://127.0.0.1:9000".into(),
            s3_region: "us-east-1".into(),
            s3_bucket: bucket.into(),
            s3_force_path_style: true,
            s3_secret: "ocellus-s3".into(),
            gpu_resource: "nvidia.com/gpu".into(),
            gpu_runtime_class: String::new(),
            gpu_tolerations: Tolerations(vec![Toleration {
                key: Some("nvidia.com/gpu".into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Default::default()
            }]),
            gpu_node_selector: Selector::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_values_parse() {
        let t = parse_tolerations(r#"[{"key":"nvidia.com/gpu","operator":"Exists","effect":"NoSchedule"}]"#)
            .expect("tolerations");
        assert_eq!(t.0.len(), 1);
        assert_eq!(parse_tolerations("null").expect("null"), Tolerations::default());
        assert_eq!(parse_selector(r#"{"pool":"gpu"}"#).expect("selector").0["pool"], "gpu");
        assert!(parse_selector("[1]").is_err());
    }
}

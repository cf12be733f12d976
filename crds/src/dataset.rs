//! `Dataset`: labelled images ingested, validated and versioned in object storage.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{CommonStatus, SecretRef, Task};

/// A set of labelled images and the request to ingest, validate and version it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ocellus.dev",
    version = "v1alpha1",
    kind = "Dataset",
    namespaced,
    status = "DatasetStatus",
    shortname = "ds",
    category = "ocellus",
    doc = "A Dataset: labelled images ingested from an archive or object prefix, validated, normalised and versioned.",
    printcolumn = r#"{"name":"Task","type":"string","jsonPath":".spec.task"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Images","type":"integer","jsonPath":".status.counts.images"}"#,
    printcolumn = r#"{"name":"Classes","type":"integer","jsonPath":".status.counts.classes"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DatasetSpec {
    /// The task the labels are for: detect, segment, classify, pose or obb.
    pub task: Task,
    /// Class names in index order. When set, the names found in the source must match; when empty, they are taken from the source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = kube::core::Rule::new("self.all(n, self.exists_one(m, m == n))").message("classNames must be unique"))]
    pub class_names: Vec<String>,
    /// Where the images and labels come from. Exactly one of `s3`, `https` or `upload` is set.
    pub source: DatasetSource,
    /// Layout of the source: `auto` (default) detects YOLO, COCO or class folders.
    #[serde(default)]
    pub format: DatasetFormat,
    /// Split ratios. When unset, the source's own train/val/test splits are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitRatios>,
    /// What ingest does with invalid items (corrupt images, bad label rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<ValidationPolicy>,
    /// Immutable snapshots to freeze, in order; each becomes `status.versions[]` once frozen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = kube::core::Rule::new("self.all(v, self.exists_one(w, w.name == v.name))").message("version names must be unique"))]
    pub versions: Vec<DatasetVersionRequest>,
}

/// Where a dataset's files come from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("[has(self.s3), has(self.https), has(self.upload)].filter(x, x).size() == 1").message("exactly one of s3, https or upload must be set"))]
pub struct DatasetSource {
    /// An archive (`.zip`, `.tar`, `.tar.gz`) or object prefix in S3-compatible storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Source>,
    /// An archive downloadable over HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https: Option<HttpsSource>,
    /// Objects uploaded through the Ocellus API into the platform bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<UploadSource>,
}

/// An S3 archive or prefix.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Source {
    /// `s3://bucket/key.zip` for an archive, or `s3://bucket/prefix/` (trailing slash) for a prefix.
    #[schemars(regex(pattern = r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$"))]
    pub uri: String,
    /// S3 endpoint URL for non-AWS storage (path-style addressing is used). Defaults to the platform's endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Region of the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Secret with `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`. Defaults to the platform's credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<SecretRef>,
}

/// An archive behind an HTTPS URL.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpsSource {
    /// The archive's URL.
    #[schemars(regex(pattern = r"^https?://.+"))]
    pub url: String,
    /// Secret whose keys are sent as HTTP request headers (e.g. `Authorization`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_secret: Option<SecretRef>,
}

/// Files uploaded through the API.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UploadSource {
    /// Object keys (archives or loose files) in the platform bucket, relative to the dataset's upload prefix.
    #[schemars(length(min = 1))]
    pub objects: Vec<String>,
}

/// Layout of the source files.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum DatasetFormat {
    /// Detect the layout from the files.
    #[default]
    Auto,
    /// Ultralytics YOLO: `data.yaml`, `images/<split>/`, `labels/<split>/`.
    Yolo,
    /// COCO JSON annotations.
    Coco,
    /// Classification folders: `<split>/<class>/<image>`.
    Folders,
}

/// Ratios for assigning images to splits, deterministically by content hash.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.train + self.val + self.test > 0.999 && self.train + self.val + self.test < 1.001").message("split ratios must sum to 1"))]
pub struct SplitRatios {
    /// Fraction of images for training.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub train: f64,
    /// Fraction of images for validation.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub val: f64,
    /// Fraction of images for testing.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub test: f64,
}

/// What to do with invalid items.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValidationPolicy {
    /// `Exclude` (default) drops invalid items and reports them; `Fail` fails the ingest on the first.
    #[serde(default)]
    pub on_invalid: InvalidItemAction,
    /// With `Exclude`, fail anyway when more than this fraction of items is invalid (default 0.05).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_invalid_fraction: Option<f64>,
}

/// Action for invalid items.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum InvalidItemAction {
    /// Drop the item, report it, and go on.
    #[default]
    Exclude,
    /// Fail the ingest.
    Fail,
}

/// A request to freeze the current manifest as an immutable version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatasetVersionRequest {
    /// Version name, `v<N>`.
    #[schemars(regex(pattern = r"^v[1-9][0-9]{0,5}$"))]
    pub name: String,
    /// Free-text description of the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Lifecycle phase of a Dataset.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum DatasetPhase {
    /// Accepted, ingest not started.
    #[default]
    Pending,
    /// The ingest Job is running.
    Ingesting,
    /// Ingested and validated; the manifest is usable.
    Ready,
    /// Ingest failed; see conditions.
    Failed,
}

/// Observed state of a Dataset.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct DatasetStatus {
    /// Generation and kstatus conditions.
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: DatasetPhase,
    /// Ingest progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Image, class and annotation counts of the current manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<DatasetCounts>,
    /// Summary of invalid items found at ingest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<ValidationSummary>,
    /// URI of the normalised NDJSON manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_uri: Option<String>,
    /// URI of the summary JSON (statistics, histograms, errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary_uri: Option<String>,
    /// Class names resolved at ingest, in index order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_names: Vec<String>,
    /// Frozen versions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<DatasetVersionStatus>,
    /// Name of the ingest Job of the current generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// When the last ingest finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ingest_time: Option<Time>,
}

/// Items done out of a total.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Items processed so far.
    pub done: i64,
    /// Items in total, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<i64>,
}

/// Counts of a manifest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct DatasetCounts {
    /// Valid images.
    pub images: i64,
    /// Classes.
    pub classes: i64,
    /// Annotations (boxes, polygons, keypoint sets), or labelled images for classify.
    pub annotations: i64,
    /// Images per split (`train`, `val`, `test`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub per_split: BTreeMap<String, i64>,
    /// Per-class instance and image counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_class: Vec<ClassCount>,
}

/// Counts for one class.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ClassCount {
    /// Class name.
    pub name: String,
    /// Instances (annotations) of the class.
    pub instances: i64,
    /// Images with at least one instance.
    pub images: i64,
}

/// Invalid items found at ingest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ValidationSummary {
    /// Number of invalid items.
    pub invalid_items: i64,
    /// Invalid items by kind (e.g. `CorruptImage`, `ClassOutOfRange`, `Duplicate`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_reason: BTreeMap<String, i64>,
    /// The first few errors as `file: reason`; the full list is in the summary JSON.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<String>,
}

/// A frozen version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct DatasetVersionStatus {
    /// Version name, `v<N>`.
    pub name: String,
    /// Description given at freeze time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// URI of the immutable manifest.
    pub manifest_uri: String,
    /// Images in the version.
    pub images: i64,
    /// When the version was frozen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Time>,
}

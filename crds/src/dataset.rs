//! `Dataset`: labelled images ingested, validated and versioned in object storage.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{CommonStatus, JobStatus, SecretRef, Task};

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
    doc = "A Dataset: labelled images ingested from an archive or object prefix, validated, normalised and versioned. Deleting it deletes its Jobs but keeps its objects in the platform bucket (manifest, images, versions): TrainingJobs and Exports may still read them.",
    printcolumn = r#"{"name":"Task","type":"string","jsonPath":".spec.task"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Images","type":"integer","jsonPath":".status.counts.images"}"#,
    printcolumn = r#"{"name":"Classes","type":"integer","jsonPath":".status.counts.classes"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DatasetSpec {
    /// The vision task the labels are for: `detect` (boxes), `segment` (polygons), `classify` (one class per image), `pose` (keypoints) or `obb` (rotated boxes). Decides how labels are read; TrainingJobs can train `detect` and `classify` so far.
    pub task: Task,
    /// Class names in index order, unique. Empty (default): taken from the source (YOLO `data.yaml`, COCO categories, folder names). Set: YOLO names must match in order, COCO and folder names as a set, or the ingest fails; required when the source names none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = kube::core::Rule::new("self.all(n, self.exists_one(m, m == n))").message("classNames must be unique"))]
    pub class_names: Vec<String>,
    /// Where the images and labels come from: at most one of `s3`, `https` or `upload`. Unset (or empty): the Dataset waits for one in phase `Pending` (reason `AwaitingSource`) and runs no Job; the REST APIs create Datasets this way, then set `upload` once files are uploaded.
    #[serde(default, skip_serializing_if = "DatasetSource::is_empty")]
    pub source: DatasetSource,
    /// Layout of the source: `yolo`, `coco`, `folders`, or `auto` (default), which picks `folders` for classify, else `yolo` when there is a `data.yaml` or `labels/` directory, else `coco` when there is a COCO JSON file.
    #[serde(default)]
    pub format: DatasetFormat,
    /// Reassigns every image to train/val/test by these ratios, deterministically from its content hash. Unset: the source's own splits (split directory names) are kept; if some image has none, all are split 0.8/0.2/0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitRatios>,
    /// What the ingest does with invalid items (corrupt or oversized images, bad label rows, class indices out of range). Unset: `onInvalid: Exclude` with `maxInvalidFraction: 0.05`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<ValidationPolicy>,
    /// Immutable snapshots of the manifest to freeze after a successful ingest, in order, with unique names; each appears in `status.versions` once frozen and can be pinned with a TrainingJob's `datasetRef.version`. Freezing a name again with different content is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = kube::core::Rule::new("self.all(v, self.exists_one(w, w.name == v.name))").message("version names must be unique"))]
    pub versions: Vec<DatasetVersionRequest>,
}

/// Where a dataset's files come from: at most one of `s3`, `https` or `upload`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("[has(self.s3), has(self.https), has(self.upload)].filter(x, x).size() <= 1").message("at most one of s3, https or upload may be set"))]
pub struct DatasetSource {
    /// An archive (`.zip`, `.tar`, `.tar.gz`) or every object under a prefix, in S3-compatible storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Source>,
    /// An archive (`.zip`, `.tar`, `.tar.gz`) downloaded over HTTP(S).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https: Option<HttpsSource>,
    /// Files uploaded through the Ocellus REST API into the platform bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<UploadSource>,
}

impl DatasetSource {
    /// No source is set: the Dataset waits for one.
    pub fn is_empty(&self) -> bool {
        self.s3.is_none() && self.https.is_none() && self.upload.is_none()
    }
}

/// An archive or prefix in S3-compatible storage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Source {
    /// `s3://bucket/key.zip` (or `.tar`, `.tar.gz`) for an archive, or `s3://bucket/prefix/` (trailing slash) for every object under a prefix.
    #[schemars(regex(pattern = r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$"))]
    pub uri: String,
    /// S3 endpoint URL of the source's storage when it is not the platform's, e.g. `https://minio.example.com:9000`; path-style addressing is used. Unset: the platform's endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Region of the bucket, for request signing. Unset: the platform's region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Secret in the same namespace with keys `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` to read the source with. Unset: the platform's credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<SecretRef>,
}

/// An archive behind an HTTP(S) URL.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpsSource {
    /// URL of the archive (`.zip`, `.tar`, `.tar.gz`); `https://`, or `http://`. Interrupted downloads are resumed.
    #[schemars(regex(pattern = r"^https?://.+"))]
    pub url: String,
    /// Secret in the same namespace whose keys and values are sent as HTTP request headers (e.g. key `Authorization`). Unset: no extra headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_secret: Option<SecretRef>,
}

/// Files uploaded through the Ocellus REST API.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UploadSource {
    /// Keys of the uploaded objects (archives, or loose images and label files), relative to the Dataset's upload prefix `<namespace>/datasets/<name>/uploads/` in the platform bucket; at least one.
    #[schemars(length(min = 1))]
    pub objects: Vec<String>,
}

/// Layout of the source files: `auto`, `yolo`, `coco` or `folders`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum DatasetFormat {
    /// `auto`: `folders` for a classify dataset, else `yolo` when there is a `data.yaml` or a `labels/` directory, else
    /// `coco` when there is a COCO JSON file.
    #[default]
    Auto,
    /// `yolo`: Ultralytics YOLO, `data.yaml` (class names), `images/<split>/` and one `labels/<split>/<image>.txt` per
    /// image.
    Yolo,
    /// `coco`: COCO JSON annotation files (`images`, `annotations`, `categories`) beside the images; classes matched by
    /// name.
    Coco,
    /// `folders`: classification folders, `<split>/<class>/<image>`; the folder name is the class.
    Folders,
}

/// Ratios for assigning images to splits, deterministically by content hash; `train + val + test` must be 1.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.train + self.val + self.test > 0.999 && self.train + self.val + self.test < 1.001").message("split ratios must sum to 1"))]
pub struct SplitRatios {
    /// Fraction of images for training, 0 to 1.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub train: f64,
    /// Fraction of images for validation (the epochs' metrics and the `best` checkpoint), 0 to 1.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub val: f64,
    /// Fraction of images held out for testing, 0 to 1; default 0.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub test: f64,
}

/// What the ingest does with invalid items.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValidationPolicy {
    /// `Exclude` (default): drop invalid items, list them in `status.validation`, and go on; `Fail`: fail the ingest if any item is invalid. Duplicate images are dropped either way and never make the ingest fail.
    #[serde(default)]
    pub on_invalid: InvalidItemAction,
    /// With `Exclude`, fail the ingest anyway when more than this fraction of the items is invalid; 0 to 1, default 0.05 (5%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_invalid_fraction: Option<f64>,
}

/// Action for invalid items: `Exclude` or `Fail`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum InvalidItemAction {
    /// `Exclude`: drop the item, report it, and go on (up to `maxInvalidFraction`).
    #[default]
    Exclude,
    /// `Fail`: fail the ingest when any item is invalid (duplicates aside); the previous manifest stays in use.
    Fail,
}

/// A request to freeze the current manifest as an immutable, named version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatasetVersionRequest {
    /// Version name, `v<N>` with N from 1 to 999999 (`v1`, `v2`, …); unique within the Dataset.
    #[schemars(regex(pattern = r"^v[1-9][0-9]{0,5}$"))]
    pub name: String,
    /// Free-text description of the snapshot, kept in `status.versions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Lifecycle phase of a Dataset: `Pending`, `Ingesting`, `Ready` or `Failed`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum DatasetPhase {
    /// `Pending`: accepted, ingest not started.
    #[default]
    Pending,
    /// `Ingesting`: the ingest Job is running.
    Ingesting,
    /// `Ready`: ingested and validated; the manifest can be trained on.
    Ready,
    /// `Failed`: the ingest failed (see `failure` and the conditions); a previous manifest stays valid.
    Failed,
}

/// Observed state of a Dataset.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct DatasetStatus {
    /// Generation and kstatus conditions.
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Lifecycle phase: `Pending`, `Ingesting`, `Ready` or `Failed`.
    #[serde(default)]
    pub phase: DatasetPhase,
    /// Progress of the running ingest: items processed and, when known, the total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Image, class and annotation counts of the current manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<DatasetCounts>,
    /// Summary of invalid items found at ingest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<ValidationSummary>,
    /// `s3://` URI of the current normalised NDJSON manifest; written last by a successful ingest, so it is always complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_uri: Option<String>,
    /// `s3://` URI of the ingest's summary JSON: statistics, histograms and the full list of invalid items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary_uri: Option<String>,
    /// Class names in index order, as resolved at ingest (from `spec.classNames` or the source).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_names: Vec<String>,
    /// The versions frozen so far.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<DatasetVersionStatus>,
    /// Hash of the spec fields the current manifest was ingested from (`task`, `classNames`, `source`, `format`, `split`, `validation`); when the spec's hash differs, the Dataset is ingested again. Changing `versions` never re-ingests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingested_hash: Option<String>,
    /// The ingest (or freeze) Job of the current generation, when it started and finished, and
    /// why it failed.
    #[serde(flatten)]
    pub job: JobStatus,
}

/// Items done out of a total.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Items (images) processed so far in the current phase.
    pub done: i64,
    /// Items in total in the current phase, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<i64>,
}

/// Counts of a manifest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct DatasetCounts {
    /// Valid images in the manifest.
    pub images: i64,
    /// Number of classes.
    pub classes: i64,
    /// Annotations (boxes, polygons, keypoint sets), or labelled images for classify.
    pub annotations: i64,
    /// Images per split (`train`, `val`, `test`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub per_split: BTreeMap<String, i64>,
    /// Instance and image counts per class, in class index order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_class: Vec<ClassCount>,
}

/// Counts for one class.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ClassCount {
    /// Name of the class.
    pub name: String,
    /// Instances (annotations) of the class.
    pub instances: i64,
    /// Images with at least one instance of the class.
    pub images: i64,
}

/// Invalid items found at ingest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ValidationSummary {
    /// Number of items dropped at ingest, duplicates included.
    pub invalid_items: i64,
    /// Invalid items by kind (e.g. `CorruptImage`, `ClassOutOfRange`, `Duplicate`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_reason: BTreeMap<String, i64>,
    /// The first errors (up to 10) as `file: reason`; the full list is in the summary JSON (`summaryUri`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<String>,
}

/// A frozen version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct DatasetVersionStatus {
    /// Version name, `v<N>`.
    pub name: String,
    /// Description given in `spec.versions` at freeze time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `s3://` URI of the version's immutable manifest.
    pub manifest_uri: String,
    /// Number of images in the version.
    pub images: i64,
    /// When the version was frozen (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Time>,
}

//! The ingest pipeline: fetch → extract → detect layout → validate images and labels →
//! de-duplicate → split → store images content-addressed → summary → manifest (last: the
//! manifest is the commit point, so a failed ingest leaves the previous manifest in place).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use futures::StreamExt;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::archive::Limits;
use crate::error::{IngestError, ItemError, ItemErrorKind};
use crate::fetch::{self, Source};
use crate::image_check::{self, ImageInfo, ImageLimits};
use crate::labels::{self, Annotation};
use crate::layout::{self, FormatRequest, Labels};
use crate::manifest::{self, Header, ImageRecord};
use crate::s3::Store;
use crate::split::{self, Ratios, Split};
use crate::stats::{ClassStats, StatsBuilder};
use crate::task::Task;

/// What to do with invalid items.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Fail on the first invalid item.
    pub fail_on_invalid: bool,
    /// With exclusion, fail when more than this fraction is invalid.
    pub max_invalid_fraction: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { fail_on_invalid: false, max_invalid_fraction: 0.05 }
    }
}

/// Ingest settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Dataset name (manifest header).
    pub name: String,
    /// Task.
    pub task: Task,
    /// Expected class names (empty: take the source's).
    pub class_names: Vec<String>,
    /// Layout.
    pub format: FormatRequest,
    /// Reassign splits by these ratios (else keep the source's).
    pub ratios: Option<Ratios>,
    /// Invalid-item policy.
    pub policy: Policy,
    /// Archive caps.
    pub archive_limits: Limits,
    /// Image caps.
    pub image_limits: ImageLimits,
    /// Key prefix of the dataset in the bucket (`<namespace>/datasets/<name>`).
    pub prefix: String,
    /// Local scratch directory.
    pub work_dir: PathBuf,
    /// Concurrent uploads.
    pub upload_concurrency: usize,
}

impl Options {
    /// Options with the defaults: auto layout, the source's splits and class names, exclude
    /// invalid items up to 5%, default caps, 32 concurrent uploads.
    pub fn new(name: &str, task: Task, prefix: &str, work_dir: PathBuf) -> Options {
        Options {
            name: name.into(),
            task,
            class_names: vec![],
            format: FormatRequest::Auto,
            ratios: None,
            policy: Policy::default(),
            archive_limits: Limits::default(),
            image_limits: ImageLimits::default(),
            prefix: prefix.into(),
            work_dir,
            upload_concurrency: 32,
        }
    }
}

/// A progress report.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// Phase: `fetch`, `validate`, `upload`, `write`.
    pub phase: &'static str,
    /// Items done.
    pub done: usize,
    /// Items in total.
    pub total: usize,
}

/// Counts in the summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Valid images.
    pub images: u64,
    /// Classes.
    pub classes: u64,
    /// Annotations.
    pub annotations: u64,
    /// Images per split.
    pub per_split: BTreeMap<String, u64>,
    /// `(name, instances, images)` per class.
    pub per_class: Vec<ClassCount>,
}

/// Per-class counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassCount {
    /// Name.
    pub name: String,
    /// Instances.
    pub instances: u64,
    /// Images.
    pub images: u64,
}

/// Invalid items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Invalid {
    /// How many.
    pub total: usize,
    /// By kind.
    pub by_reason: BTreeMap<String, usize>,
    /// Every invalid item.
    pub items: Vec<ItemError>,
}

/// The summary JSON written next to the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Task.
    pub task: Task,
    /// Detected format.
    pub format: String,
    /// Class names.
    pub class_names: Vec<String>,
    /// Counts.
    pub counts: Counts,
    /// The `class-stats` body.
    pub class_stats: ClassStats,
    /// Invalid items.
    pub invalid: Invalid,
    /// Items considered (valid + invalid).
    pub items_seen: usize,
    /// Manifest URI.
    pub manifest_uri: String,
    /// Wall time.
    pub duration_seconds: f64,
    /// Seconds spent fetching and extracting.
    pub fetch_seconds: f64,
    /// Seconds spent decoding and checking images and labels.
    pub validate_seconds: f64,
    /// Seconds spent storing images.
    pub upload_seconds: f64,
    /// Items considered per second, end to end.
    pub images_per_second: f64,
}

struct Valid {
    item: layout::Item,
    info: ImageInfo,
    anns: Vec<Annotation>,
}

/// Key of the current manifest.
pub fn manifest_key(prefix: &str) -> String {
    format!("{prefix}/manifest.ndjson")
}

/// Key of the summary.
pub fn summary_key(prefix: &str) -> String {
    format!("{prefix}/summary.json")
}

fn validate_one(
    item: layout::Item,
    task: Task,
    classes: usize,
    kpt: Option<(usize, usize)>,
    limits: ImageLimits,
) -> Result<Valid, ItemError> {
    let err = |kind, detail: String| ItemError { file: item.rel.clone(), kind, detail };
    let bytes = std::fs::read(&item.path).map_err(|e| err(ItemErrorKind::CorruptImage, e.to_string()))?;
    let info = image_check::check(&bytes, limits).map_err(|(k, d)| err(k, d))?;
    let anns = match &item.labels {
        Labels::YoloFile(None) => vec![],
        Labels::YoloFile(Some(p)) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| err(ItemErrorKind::BadLabelRow, format!("label file unreadable: {e}")))?;
            labels::parse_yolo(&text, task, classes, kpt).map_err(|e| ItemError {
                file: item.rel.clone(),
                kind: e.kind,
                detail: e.detail,
            })?
        }
        Labels::Parsed { anns, declared } => {
            if (declared.0 - f64::from(info.width)).abs() > 0.5 || (declared.1 - f64::from(info.height)).abs() > 0.5 {
                return Err(err(
                    ItemErrorKind::CoordinateOutOfRange,
                    format!(
                        "annotations are for a {}x{} image but the image is {}x{}",
                        declared.0, declared.1, info.width, info.height
                    ),
                ));
            }
            anns.clone()
        }
        Labels::Class(c) => vec![Annotation::Class { class: *c }],
    };
    Ok(Valid { item, info, anns })
}

fn check_classes(format: layout::Format, expected: &[String], found: Vec<String>) -> Result<Vec<String>, IngestError> {
    if expected.is_empty() {
        if found.is_empty() {
            return Err(IngestError::Layout(
                "no class names in the source (data.yaml `names`) and none in the Dataset's classNames".into(),
            ));
        }
        return Ok(found);
    }
    if found.is_empty() {
        return Ok(expected.to_vec());
    }
    let same = match format {
        // YOLO rows carry indices: names must match in order.
        layout::Format::Yolo => found == expected,
        // COCO maps by name and folders by folder name: the same set is enough.
        _ => {
            let mut a = found.clone();
            let mut b = expected.to_vec();
            a.sort();
            b.sort();
            a == b
        }
    };
    if !same {
        return Err(IngestError::ClassMismatch { expected: expected.to_vec(), found });
    }
    Ok(expected.to_vec())
}

/// Runs an ingest. `progress` is called from worker threads.
pub async fn ingest(
    store: &Store,
    source: &Source,
    opts: &Options,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Summary, IngestError> {
    let started = Instant::now();
    std::fs::create_dir_all(&opts.work_dir)?;
    progress(Progress { phase: "fetch", done: 0, total: 1 });
    let dir = fetch::fetch(source, &opts.work_dir, opts.archive_limits).await?;
    progress(Progress { phase: "fetch", done: 1, total: 1 });
    let fetch_seconds = started.elapsed().as_secs_f64();
    let validate_started = Instant::now();

    let task = opts.task;
    let dir2 = dir.clone();
    let format = opts.format;
    let layout = tokio::task::spawn_blocking(move || layout::detect(&dir2, format, task))
        .await
        .map_err(|e| IngestError::Layout(e.to_string()))??;
    if layout.format == layout::Format::Folders && task != Task::Classify {
        return Err(IngestError::Task(format!(
            "class folders can only be ingested for task classify, not {}",
            task.as_str()
        )));
    }
    let source_names = layout.class_names.clone();
    let class_names = check_classes(layout.format, &opts.class_names, source_names.clone())?;
    // COCO/folders: indices were assigned in the source's order; remap to the adopted order.
    let remap: Option<Vec<usize>> =
        (layout.format != layout::Format::Yolo && source_names != class_names && !source_names.is_empty())
            .then(|| source_names.iter().map(|n| class_names.iter().position(|c| c == n).unwrap_or(0)).collect());

    // Validate every image in parallel.
    let total = layout.items.len();
    let done = AtomicUsize::new(0);
    let classes = class_names.len();
    let kpt = layout.kpt_shape;
    let limits = opts.image_limits;
    let items = layout.items.clone();
    let results: Vec<Result<Valid, ItemError>> = tokio::task::block_in_place(|| {
        items
            .into_par_iter()
            .map(|item| {
                let r = validate_one(item, task, classes, kpt, limits);
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_multiple_of(500) || n == total {
                    progress(Progress { phase: "validate", done: n, total });
                }
                r
            })
            .collect()
    });
    let mut errors = layout.errors.clone();
    let mut valid = Vec::new();
    for r in results {
        match r {
            Ok(mut v) => {
                if let Some(map) = &remap {
                    for a in v.anns.iter_mut() {
                        remap_class(a, map);
                    }
                }
                valid.push(v)
            }
            Err(e) => errors.push(e),
        }
    }
    let validate_seconds = validate_started.elapsed().as_secs_f64();
    // Duplicates by content: the first by path is kept.
    valid.sort_by(|a, b| a.item.rel.cmp(&b.item.rel));
    let mut first_seen: HashMap<String, String> = HashMap::new();
    valid.retain(|v| match first_seen.get(&v.info.sha256) {
        Some(first) => {
            errors.push(ItemError {
                file: v.item.rel.clone(),
                kind: ItemErrorKind::Duplicate,
                detail: format!("same content as {first}"),
            });
            false
        }
        None => {
            first_seen.insert(v.info.sha256.clone(), v.item.rel.clone());
            true
        }
    });
    errors.sort_by(|a, b| a.file.cmp(&b.file));

    // Policy, before anything is written.
    let seen = valid.len() + errors.iter().filter(|e| e.kind != ItemErrorKind::Duplicate).count();
    let limit =
        if opts.policy.fail_on_invalid { 0 } else { (opts.policy.max_invalid_fraction * seen as f64).floor() as usize };
    let invalid_count = errors.iter().filter(|e| e.kind != ItemErrorKind::Duplicate).count();
    if invalid_count > limit {
        return Err(IngestError::TooManyInvalid {
            invalid: invalid_count,
            total: seen,
            limit,
            first: errors.first().map(|e| e.to_string()).unwrap_or_default(),
        });
    }
    if valid.is_empty() {
        return Err(IngestError::Empty);
    }

    // Splits: the source's, or by ratio from the content hash.
    let keep = opts.ratios.is_none() && valid.iter().all(|v| v.item.split.is_some());
    let ratios = opts.ratios.unwrap_or(Ratios { train: 0.8, val: 0.2, test: 0.0 });
    let splits: Vec<Split> = valid
        .iter()
        .map(|v| if keep { v.item.split.unwrap_or(Split::Train) } else { split::assign(&v.info.sha256, ratios) })
        .collect();

    // Store images content-addressed (existing objects are skipped).
    let upload_started = Instant::now();
    let total = valid.len();
    let uploaded = AtomicUsize::new(0);
    // One listing instead of a HEAD per image: content-addressed keys that exist are complete.
    let existing: std::collections::HashSet<String> = store
        .list(&format!("{}/images/", opts.prefix))
        .await
        .map_err(|e| IngestError::Storage(e.to_string()))?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let existing = &existing;
    let uploads = valid.iter().map(|v| {
        let key = format!("{}/images/{}.{}", opts.prefix, v.info.sha256, v.info.ext);
        let path = v.item.path.clone();
        let ext = v.info.ext;
        let uploaded = &uploaded;
        async move {
            if !existing.contains(&key) {
                let ct = match ext {
                    "jpg" => "image/jpeg",
                    "png" => "image/png",
                    "webp" => "image/webp",
                    _ => "image/bmp",
                };
                store.put_file(&key, &path, ct).await.map_err(|e| IngestError::Storage(e.to_string()))?;
            }
            let n = uploaded.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_multiple_of(500) || n == total {
                progress(Progress { phase: "upload", done: n, total });
            }
            Ok::<_, IngestError>(())
        }
    });
    let results: Vec<Result<(), IngestError>> =
        futures::stream::iter(uploads).buffer_unordered(opts.upload_concurrency.max(1)).collect().await;
    results.into_iter().collect::<Result<Vec<_>, _>>()?;
    let upload_seconds = upload_started.elapsed().as_secs_f64();

    // Records and statistics.
    let mut stats = StatsBuilder::new(&class_names);
    let mut records = Vec::with_capacity(valid.len());
    for (v, split) in valid.iter().zip(&splits) {
        stats.add(*split, v.info.width, v.info.height, &v.anns);
        let file = format!("{}.{}", v.info.sha256, v.info.ext);
        records.push(ImageRecord {
            type_: "image".into(),
            url: store.uri(&format!("{}/images/{file}", opts.prefix)),
            file,
            source: v.item.rel.clone(),
            width: v.info.width,
            height: v.info.height,
            split: *split,
            sha256: v.info.sha256.clone(),
            annotations: manifest::annotations_json(task, &v.anns),
        });
    }
    let header = Header {
        type_: "dataset".into(),
        task,
        name: opts.name.clone(),
        class_names: class_names.iter().enumerate().map(|(i, n)| (i.to_string(), n.clone())).collect(),
        kpt_shape: layout.kpt_shape.map(|(k, d)| [k, d]),
        images: records.len(),
        created_at: chrono::Utc::now().to_rfc3339(),
    };
    let (images, annotations) = stats.totals();
    let mut by_reason = BTreeMap::new();
    for e in &errors {
        *by_reason.entry(e.kind.as_str().to_string()).or_insert(0) += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let summary = Summary {
        task,
        format: layout.format.as_str().into(),
        class_names: class_names.clone(),
        counts: Counts {
            images,
            classes: class_names.len() as u64,
            annotations,
            per_split: stats.per_split(),
            per_class: stats
                .per_class()
                .into_iter()
                .map(|(name, instances, images)| ClassCount { name, instances, images })
                .collect(),
        },
        class_stats: stats.class_stats(),
        invalid: Invalid { total: errors.len(), by_reason, items: errors },
        items_seen: seen,
        manifest_uri: store.uri(&manifest_key(&opts.prefix)),
        duration_seconds: elapsed,
        fetch_seconds,
        validate_seconds,
        upload_seconds,
        images_per_second: seen as f64 / elapsed.max(1e-9),
    };
    progress(Progress { phase: "write", done: 0, total: 2 });
    let summary_json = serde_json::to_vec_pretty(&summary).map_err(|e| IngestError::Storage(e.to_string()))?;
    store
        .put(&summary_key(&opts.prefix), summary_json.into(), "application/json")
        .await
        .map_err(|e| IngestError::Storage(e.to_string()))?;
    let ndjson = manifest::to_ndjson(&header, &records).map_err(|e| IngestError::Storage(e.to_string()))?;
    store
        .put(&manifest_key(&opts.prefix), ndjson.into(), "application/x-ndjson")
        .await
        .map_err(|e| IngestError::Storage(e.to_string()))?;
    progress(Progress { phase: "write", done: 2, total: 2 });
    Ok(summary)
}

fn remap_class(a: &mut Annotation, map: &[usize]) {
    let m = |c: &mut usize| *c = map.get(*c).copied().unwrap_or(*c);
    match a {
        Annotation::Box { class, .. }
        | Annotation::Polygon { class, .. }
        | Annotation::Pose { class, .. }
        | Annotation::Obb { class, .. }
        | Annotation::Class { class } => m(class),
    }
}

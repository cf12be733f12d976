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
use crate::split::{self, Ratios, Split};
use crate::stats::{ClassStats, StatsBuilder};
use crate::task::Task;
use ocellus_storage::s3::Store;

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
///
/// The steps, in order: fetch and extract the source; detect its layout; adopt the class names;
/// validate every image and label (in parallel); drop duplicates; apply the invalid-item policy
/// (before anything is written); assign splits; upload the images content-addressed; build the
/// records and the summary; write the summary, then the manifest (the commit point).
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
    let layout = detect_layout(dir, opts).await?;
    let classes = adopt_classes(&layout, &opts.class_names)?;
    let (valid, mut errors) = validate_all(&layout, opts, &classes, progress);
    let valid = drop_duplicates(valid, &mut errors);
    let validate_seconds = validate_started.elapsed().as_secs_f64();
    let seen = apply_policy(&valid, &errors, &opts.policy)?;
    let splits = assign_splits(&valid, opts.ratios);

    let upload_started = Instant::now();
    upload_images(store, &valid, opts, progress).await?;
    let upload_seconds = upload_started.elapsed().as_secs_f64();

    let (header, records, stats) = build_records(&valid, &splits, &classes.names, &layout, opts, |file| {
        store.uri(&format!("{}/images/{file}", opts.prefix))
    });
    let elapsed = started.elapsed().as_secs_f64();
    let timings = Timings { total: elapsed, fetch: fetch_seconds, validate: validate_seconds, upload: upload_seconds };
    let summary = build_summary(
        &layout,
        opts.task,
        classes.names,
        stats,
        errors,
        seen,
        timings,
        store.uri(&manifest_key(&opts.prefix)),
    );
    write_outputs(store, &opts.prefix, &summary, &header, &records, progress).await?;
    Ok(summary)
}

/// Detects the layout (on a blocking thread: it walks the tree) and checks it fits the task.
async fn detect_layout(dir: PathBuf, opts: &Options) -> Result<layout::Layout, IngestError> {
    let (format, task) = (opts.format, opts.task);
    let layout = tokio::task::spawn_blocking(move || layout::detect(&dir, format, task))
        .await
        .map_err(|e| IngestError::Layout(e.to_string()))??;
    if layout.format == layout::Format::Folders && task != Task::Classify {
        return Err(IngestError::Task(format!(
            "class folders can only be ingested for task classify, not {}",
            task.as_str()
        )));
    }
    Ok(layout)
}

/// The class names adopted and, where the source numbered classes in another order (COCO,
/// folders), how to map its indices onto them.
#[derive(Debug, PartialEq)]
struct Classes {
    names: Vec<String>,
    remap: Option<Vec<usize>>,
}

/// Adopts the Dataset's class names (or the source's) and the index remapping (pure).
fn adopt_classes(layout: &layout::Layout, expected: &[String]) -> Result<Classes, IngestError> {
    let source_names = &layout.class_names;
    let names = check_classes(layout.format, expected, source_names.clone())?;
    // COCO/folders: indices were assigned in the source's order; remap to the adopted order.
    let remap = (layout.format != layout::Format::Yolo && *source_names != names && !source_names.is_empty())
        .then(|| source_names.iter().map(|n| names.iter().position(|c| c == n).unwrap_or(0)).collect());
    Ok(Classes { names, remap })
}

/// Validates every image and its labels in parallel; returns the valid items (classes remapped)
/// and the errors (the layout's and the items').
fn validate_all(
    layout: &layout::Layout,
    opts: &Options,
    classes: &Classes,
    progress: &(dyn Fn(Progress) + Sync),
) -> (Vec<Valid>, Vec<ItemError>) {
    let total = layout.items.len();
    let done = AtomicUsize::new(0);
    let (task, nc, kpt, limits) = (opts.task, classes.names.len(), layout.kpt_shape, opts.image_limits);
    let results: Vec<Result<Valid, ItemError>> = tokio::task::block_in_place(|| {
        layout
            .items
            .clone()
            .into_par_iter()
            .map(|item| {
                let r = validate_one(item, task, nc, kpt, limits);
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
                if let Some(map) = &classes.remap {
                    v.anns.iter_mut().for_each(|a| remap_class(a, map));
                }
                valid.push(v)
            }
            Err(e) => errors.push(e),
        }
    }
    (valid, errors)
}

/// Drops images whose content repeats an earlier one (by path order), recording each as a
/// `Duplicate` error; sorts the errors by file (pure).
fn drop_duplicates(mut valid: Vec<Valid>, errors: &mut Vec<ItemError>) -> Vec<Valid> {
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
    valid
}

/// Fails the ingest when more items are invalid than the policy allows (duplicates are not
/// invalid) or nothing is left; returns the number of distinct items seen (pure).
fn apply_policy(valid: &[Valid], errors: &[ItemError], policy: &Policy) -> Result<usize, IngestError> {
    let invalid = errors.iter().filter(|e| e.kind != ItemErrorKind::Duplicate).count();
    let seen = valid.len() + invalid;
    let limit = if policy.fail_on_invalid { 0 } else { (policy.max_invalid_fraction * seen as f64).floor() as usize };
    if invalid > limit {
        return Err(IngestError::TooManyInvalid {
            invalid,
            total: seen,
            limit,
            first: errors.first().map(|e| e.to_string()).unwrap_or_default(),
        });
    }
    if valid.is_empty() {
        return Err(IngestError::Empty);
    }
    Ok(seen)
}

/// The source's splits when every item has one and no ratios were asked for; otherwise splits
/// by ratio (default 80/20/0) from each image's content hash, so re-ingests agree (pure).
fn assign_splits(valid: &[Valid], ratios: Option<Ratios>) -> Vec<Split> {
    let keep = ratios.is_none() && valid.iter().all(|v| v.item.split.is_some());
    let ratios = ratios.unwrap_or(Ratios { train: 0.8, val: 0.2, test: 0.0 });
    valid
        .iter()
        .map(|v| if keep { v.item.split.unwrap_or(Split::Train) } else { split::assign(&v.info.sha256, ratios) })
        .collect()
}

/// Uploads the images content-addressed, skipping keys that exist (one listing, not a HEAD per
/// image: a content-addressed key that exists is complete).
async fn upload_images(
    store: &Store,
    valid: &[Valid],
    opts: &Options,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(), IngestError> {
    let total = valid.len();
    let uploaded = AtomicUsize::new(0);
    let existing: std::collections::HashSet<String> = store
        .list(&format!("{}/images/", opts.prefix))
        .await
        .map_err(|e| IngestError::Storage(e.to_string()))?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let existing = &existing;
    let uploaded = &uploaded;
    let uploads = valid.iter().map(|v| async move {
        let key = format!("{}/images/{}.{}", opts.prefix, v.info.sha256, v.info.ext);
        if !existing.contains(&key) {
            let ct = match v.info.ext {
                "jpg" => "image/jpeg",
                "png" => "image/png",
                "webp" => "image/webp",
                _ => "image/bmp",
            };
            store.put_file(&key, &v.item.path, ct).await.map_err(|e| IngestError::Storage(e.to_string()))?;
        }
        let n = uploaded.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(500) || n == total {
            progress(Progress { phase: "upload", done: n, total });
        }
        Ok::<_, IngestError>(())
    });
    let results: Vec<Result<(), IngestError>> =
        futures::stream::iter(uploads).buffer_unordered(opts.upload_concurrency.max(1)).collect().await;
    results.into_iter().collect()
}

/// The manifest's header and records and the statistics (pure; `url` names an image's object).
fn build_records(
    valid: &[Valid],
    splits: &[Split],
    class_names: &[String],
    layout: &layout::Layout,
    opts: &Options,
    url: impl Fn(&str) -> String,
) -> (Header, Vec<ImageRecord>, StatsBuilder) {
    let mut stats = StatsBuilder::new(class_names);
    let mut records = Vec::with_capacity(valid.len());
    for (v, split) in valid.iter().zip(splits) {
        stats.add(*split, v.info.width, v.info.height, &v.anns);
        let file = format!("{}.{}", v.info.sha256, v.info.ext);
        records.push(ImageRecord {
            type_: "image".into(),
            url: url(&file),
            file,
            source: v.item.rel.clone(),
            width: v.info.width,
            height: v.info.height,
            split: *split,
            sha256: v.info.sha256.clone(),
            annotations: manifest::annotations_json(opts.task, &v.anns),
        });
    }
    let header = Header {
        type_: "dataset".into(),
        task: opts.task,
        name: opts.name.clone(),
        class_names: class_names.iter().enumerate().map(|(i, n)| (i.to_string(), n.clone())).collect(),
        kpt_shape: layout.kpt_shape.map(|(k, d)| [k, d]),
        images: records.len(),
        created_at: chrono::Utc::now().to_rfc3339(),
    };
    (header, records, stats)
}

/// Seconds spent per step.
struct Timings {
    total: f64,
    fetch: f64,
    validate: f64,
    upload: f64,
}

/// The summary written next to the manifest (pure).
#[allow(clippy::too_many_arguments, reason = "the outputs of the earlier steps, each used once")]
fn build_summary(
    layout: &layout::Layout,
    task: Task,
    class_names: Vec<String>,
    stats: StatsBuilder,
    errors: Vec<ItemError>,
    seen: usize,
    t: Timings,
    manifest_uri: String,
) -> Summary {
    let (images, annotations) = stats.totals();
    let mut by_reason = BTreeMap::new();
    for e in &errors {
        *by_reason.entry(e.kind.as_str().to_string()).or_insert(0) += 1;
    }
    Summary {
        task,
        format: layout.format.as_str().into(),
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
        class_names,
        class_stats: stats.class_stats(),
        invalid: Invalid { total: errors.len(), by_reason, items: errors },
        items_seen: seen,
        manifest_uri,
        duration_seconds: t.total,
        fetch_seconds: t.fetch,
        validate_seconds: t.validate,
        upload_seconds: t.upload,
        images_per_second: seen as f64 / t.total.max(1e-9),
    }
}

/// Writes the summary, then the manifest: the manifest is the commit point, so a failure before
/// it leaves the previous manifest valid.
async fn write_outputs(
    store: &Store,
    prefix: &str,
    summary: &Summary,
    header: &Header,
    records: &[ImageRecord],
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(), IngestError> {
    progress(Progress { phase: "write", done: 0, total: 2 });
    let storage = |e: ocellus_storage::StoreError| IngestError::Storage(e.to_string());
    let summary_json = serde_json::to_vec_pretty(summary).map_err(|e| IngestError::Storage(e.to_string()))?;
    store.put(&summary_key(prefix), summary_json.into(), "application/json").await.map_err(storage)?;
    let ndjson = manifest::to_ndjson(header, records).map_err(|e| IngestError::Storage(e.to_string()))?;
    store.put(&manifest_key(prefix), ndjson.into(), "application/x-ndjson").await.map_err(storage)?;
    progress(Progress { phase: "write", done: 2, total: 2 });
    Ok(())
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

#[cfg(test)]
mod pipeline_tests {
    use super::*;

    fn valid(rel: &str, sha: &str, split: Option<Split>) -> Valid {
        Valid {
            item: layout::Item { rel: rel.into(), path: rel.into(), split, labels: Labels::YoloFile(None) },
            info: ImageInfo { width: 4, height: 3, ext: "jpg", sha256: sha.repeat(64 / sha.len()) },
            anns: vec![Annotation::Box { class: 1, cx: 0.5, cy: 0.5, w: 0.2, h: 0.2 }],
        }
    }

    fn error(file: &str, kind: ItemErrorKind) -> ItemError {
        ItemError { file: file.into(), kind, detail: "x".into() }
    }

    fn layout(format: layout::Format, names: &[&str]) -> layout::Layout {
        layout::Layout {
            format,
            class_names: names.iter().map(|n| n.to_string()).collect(),
            kpt_shape: None,
            items: vec![],
            errors: vec![],
        }
    }

    #[test]
    fn duplicates_keep_the_first_path_and_are_reported() {
        let mut errors = vec![error("z.jpg", ItemErrorKind::CorruptImage)];
        let kept = drop_duplicates(vec![valid("b.jpg", "aa", None), valid("a.jpg", "aa", None)], &mut errors);
        assert_eq!(kept.iter().map(|v| v.item.rel.as_str()).collect::<Vec<_>>(), ["a.jpg"]);
        assert_eq!(errors.len(), 2);
        assert_eq!((errors[0].file.as_str(), errors[0].kind), ("b.jpg", ItemErrorKind::Duplicate));
        assert_eq!(errors[0].detail, "same content as a.jpg");
    }

    #[test]
    fn policy_counts_invalid_items_but_not_duplicates() {
        let valid: Vec<Valid> = (0..19).map(|i| valid(&format!("{i}.jpg"), &format!("{i:02}"), None)).collect();
        let one_bad = [error("x.jpg", ItemErrorKind::CorruptImage), error("d.jpg", ItemErrorKind::Duplicate)];
        // 1 invalid of 20 seen is at the 5% limit: accepted; 20 distinct items were seen.
        assert_eq!(apply_policy(&valid, &one_bad, &Policy::default()).expect("within the limit"), 20);
        let strict = Policy { fail_on_invalid: true, ..Policy::default() };
        match apply_policy(&valid, &one_bad, &strict) {
            Err(IngestError::TooManyInvalid { invalid: 1, total: 20, limit: 0, .. }) => {}
            other => panic!("expected TooManyInvalid, got {other:?}"),
        }
        assert!(matches!(apply_policy(&[], &[], &Policy::default()), Err(IngestError::Empty)));
    }

    #[test]
    fn splits_keep_the_source_unless_ratios_are_given_or_one_is_missing() {
        let with = [valid("a.jpg", "00", Some(Split::Val)), valid("b.jpg", "ff", Some(Split::Train))];
        assert_eq!(assign_splits(&with, None), [Split::Val, Split::Train]);
        // By content hash: 0x00.. is at the start (train), 0xff.. at the end (val, with 80/20/0).
        let ratios = Some(Ratios { train: 0.8, val: 0.2, test: 0.0 });
        assert_eq!(assign_splits(&with, ratios), [Split::Train, Split::Val]);
        let partial = [valid("a.jpg", "00", Some(Split::Val)), valid("b.jpg", "ff", None)];
        assert_eq!(assign_splits(&partial, None), [Split::Train, Split::Val]);
    }

    #[test]
    fn classes_follow_the_dataset_and_remap_coco_indices() {
        let coco = layout(layout::Format::Coco, &["dog", "cat"]);
        let expected = ["cat".to_string(), "dog".to_string()];
        let c = adopt_classes(&coco, &expected).expect("same set");
        assert_eq!(c, Classes { names: expected.to_vec(), remap: Some(vec![1, 0]) });
        // YOLO rows carry indices: the order must match, and nothing is remapped.
        let yolo = layout(layout::Format::Yolo, &["dog", "cat"]);
        assert!(matches!(adopt_classes(&yolo, &expected), Err(IngestError::ClassMismatch { .. })));
        let same = adopt_classes(&yolo, &[]).expect("from the source");
        assert_eq!(same, Classes { names: vec!["dog".into(), "cat".into()], remap: None });
    }

    #[test]
    fn records_and_summary_describe_the_valid_items() {
        let items = [valid("a.jpg", "0a", None), valid("b.jpg", "0b", None)];
        let names = vec!["x".to_string(), "y".to_string()];
        let opts = Options::new("d", Task::Detect, "team/datasets/d", "/scratch".into());
        let l = layout(layout::Format::Yolo, &["x", "y"]);
        let (header, records, stats) =
            build_records(&items, &[Split::Train, Split::Val], &names, &l, &opts, |f| format!("s3://b/{f}"));
        assert_eq!((header.images, header.task), (2, Task::Detect));
        assert_eq!(header.class_names.get("1").map(String::as_str), Some("y"));
        assert_eq!(records[1].split, Split::Val);
        assert_eq!(records[0].url, format!("s3://b/{}.jpg", "0a".repeat(32)));
        let t = Timings { total: 2.0, fetch: 0.5, validate: 1.0, upload: 0.5 };
        let s = build_summary(
            &l,
            Task::Detect,
            names,
            stats,
            vec![error("c.jpg", ItemErrorKind::CorruptImage)],
            3,
            t,
            "u".into(),
        );
        assert_eq!((s.counts.images, s.counts.annotations, s.counts.classes), (2, 2, 2));
        assert_eq!(s.invalid.by_reason.get("CorruptImage"), Some(&1));
        assert_eq!(s.images_per_second, 1.5);
        assert_eq!(s.counts.per_class.iter().map(|c| c.instances).collect::<Vec<_>>(), [0, 2]);
    }
}

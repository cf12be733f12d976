//! Dataset ingest against a real S3-compatible server, with archives the tests build: valid YOLO,
//! COCO and class folders, and hostile ones.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use ocellus_dataset::archive::ArchiveError;
use ocellus_dataset::fetch::Source;
use ocellus_dataset::ingest::{self, Options, Policy, Summary};
use ocellus_dataset::labels::Annotation;
use ocellus_dataset::manifest;
use ocellus_dataset::split::Ratios;
use ocellus_dataset::{IngestError, ItemErrorKind, Task, version};
use ocellus_storage::s3::{S3Config, S3Uri, Store};
use ocellus_tests::fixtures::{self, SHAPES};
use ocellus_tests::s3::{ACCESS_KEY, S3Server, SECRET_KEY};

const SIZE: u32 = 96;

fn server() -> &'static S3Server {
    static S: OnceLock<S3Server> = OnceLock::new();
    S.get_or_init(|| S3Server::start().expect("S3 server"))
}

fn config() -> S3Config {
    server().config()
}

async fn bucket(name: &str) -> Store {
    let s = Store::new(&config(), name);
    s.ensure_bucket().await.expect("bucket");
    s
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ocellus-ingest-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("dir");
    d
}

fn options(name: &str, prefix: &str, task: Task) -> Options {
    let mut o = Options::new(name, task, prefix, scratch(&format!("{name}-work")));
    o.class_names = SHAPES.iter().map(|s| s.to_string()).collect();
    o.upload_concurrency = 8;
    o
}

/// Uploads `bytes` as the source object and ingests it.
async fn ingest_bytes(store: &Store, key: &str, bytes: Vec<u8>, opts: &Options) -> Result<Summary, IngestError> {
    let src = bucket("sources").await;
    src.put(key, bytes.into(), "application/octet-stream").await.expect("upload source");
    let source = Source::S3 { uri: S3Uri { bucket: "sources".into(), key: key.into() }, config: config() };
    ingest::ingest(store, &source, opts, &|_| {}).await
}

async fn manifest_of(store: &Store, prefix: &str) -> (manifest::Header, Vec<manifest::ImageRecord>) {
    let bytes = store.get(&ingest::manifest_key(prefix)).await.expect("manifest");
    manifest::from_ndjson(&String::from_utf8_lossy(&bytes)).expect("parse manifest")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yolo_detect_archive_is_ingested() {
    let store = bucket("platform").await;
    let dir = scratch("yolo");
    let samples = fixtures::samples(1, 40, SIZE);
    fixtures::write_yolo(&dir.join("shapes"), &samples, SIZE);
    let opts = options("shapes", "team-a/datasets/shapes", Task::Detect);
    let summary = ingest_bytes(&store, "shapes.zip", fixtures::zip_dir(&dir), &opts).await.expect("ingest");

    let boxes: usize = samples.iter().map(|s| s.shapes.len()).sum();
    assert_eq!(summary.counts.images, 40);
    assert_eq!(summary.counts.annotations, boxes as u64);
    assert_eq!(summary.counts.per_split, BTreeMap::from([("train".to_string(), 32), ("val".to_string(), 8)]));
    assert_eq!(summary.format, "yolo");
    assert_eq!(summary.invalid.total, 0);
    let per_class: u64 = summary.counts.per_class.iter().map(|c| c.instances).sum();
    assert_eq!(per_class, boxes as u64);
    // class-stats shapes.
    assert_eq!(summary.class_stats.classes.len(), 3);
    assert_eq!(summary.class_stats.location_heatmap.bins.iter().flatten().sum::<u64>(), boxes as u64);
    assert_eq!(
        summary.class_stats.image_stats.width_histogram,
        vec![ocellus_dataset::stats::Bin { bin: 96, count: 40 }]
    );

    let (header, records) = manifest_of(&store, "team-a/datasets/shapes").await;
    assert_eq!(header.type_, "dataset");
    assert_eq!(header.task, Task::Detect);
    assert_eq!(header.class_names.get("2").map(String::as_str), Some("triangle"));
    assert_eq!(records.len(), 40);
    // Images are stored content-addressed.
    let stored = store.list("team-a/datasets/shapes/images/").await.expect("list");
    assert_eq!(stored.len(), 40);
    for r in &records {
        assert_eq!(r.file, format!("{}.jpg", r.sha256));
        assert_eq!(r.url, format!("s3://platform/team-a/datasets/shapes/images/{}", r.file));
        assert_eq!((r.width, r.height), (SIZE, SIZE));
    }
    // The summary is in the bucket too.
    let stored_summary: Summary =
        serde_json::from_slice(&store.get(&ingest::summary_key("team-a/datasets/shapes")).await.expect("summary"))
            .expect("json");
    assert_eq!(stored_summary.counts, summary.counts);
}

fn boxes_by_sha(task: Task, records: &[manifest::ImageRecord]) -> BTreeMap<String, Vec<(usize, [f64; 4])>> {
    records
        .iter()
        .map(|r| {
            let mut b: Vec<(usize, [f64; 4])> = manifest::parse_annotations(task, r)
                .into_iter()
                .map(|a| match a {
                    Annotation::Box { class, cx, cy, w, h } => (class, [cx, cy, w, h]),
                    other => panic!("not a box: {other:?}"),
                })
                .collect();
            b.sort_by(|x, y| x.1[0].total_cmp(&y.1[0]));
            (r.sha256.clone(), b)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coco_gives_the_same_boxes_as_yolo() {
    let store = bucket("platform").await;
    let samples = fixtures::samples(2, 30, SIZE);
    let (ydir, cdir) = (scratch("same-yolo"), scratch("same-coco"));
    fixtures::write_yolo(&ydir, &samples, SIZE);
    fixtures::write_coco(&cdir, &samples, SIZE);
    let y =
        ingest_bytes(&store, "same-yolo.zip", fixtures::zip_dir(&ydir), &options("y", "t/datasets/y", Task::Detect))
            .await
            .expect("yolo");
    let c = ingest_bytes(
        &store,
        "same-coco.tar.gz",
        fixtures::tar_gz_dir(&cdir),
        &options("c", "t/datasets/c", Task::Detect),
    )
    .await
    .expect("coco");
    assert_eq!(c.format, "coco");
    assert_eq!(y.counts, c.counts);
    let (_, yr) = manifest_of(&store, "t/datasets/y").await;
    let (_, cr) = manifest_of(&store, "t/datasets/c").await;
    let (yb, cb) = (boxes_by_sha(Task::Detect, &yr), boxes_by_sha(Task::Detect, &cr));
    assert_eq!(yb.keys().collect::<Vec<_>>(), cb.keys().collect::<Vec<_>>());
    for (sha, ybox) in &yb {
        let cbox = &cb[sha];
        assert_eq!(ybox.len(), cbox.len());
        for ((yc, yv), (cc, cv)) in ybox.iter().zip(cbox) {
            assert_eq!(yc, cc);
            for k in 0..4 {
                assert!((yv[k] - cv[k]).abs() < 1e-6, "{sha}: {yv:?} vs {cv:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classification_folders_are_ingested() {
    let store = bucket("platform").await;
    let dir = scratch("folders");
    fixtures::write_folders(&dir, 3, 30, 64);
    let opts = options("cls", "t/datasets/cls", Task::Classify);
    let s = ingest_bytes(&store, "cls.tar.gz", fixtures::tar_gz_dir(&dir), &opts).await.expect("ingest");
    assert_eq!(s.format, "folders");
    assert_eq!(s.counts.images, 30);
    assert_eq!(s.counts.annotations, 30);
    assert_eq!(s.counts.per_split.values().sum::<u64>(), 30);
    let (header, records) = manifest_of(&store, "t/datasets/cls").await;
    assert_eq!(header.task, Task::Classify);
    assert!(records.iter().all(|r| r.annotations["classification"].as_array().is_some_and(|a| a.len() == 1)));
}

/// Asserts nothing was written under the dataset's prefix.
async fn nothing_written(store: &Store, prefix: &str) {
    assert_eq!(store.list(prefix).await.expect("list"), vec![], "objects were written for a failed ingest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_archives_are_refused_and_nothing_escapes() {
    let store = bucket("platform").await;
    let jpeg = fixtures::samples(9, 1, SIZE).remove(0).jpeg;

    // Path traversal.
    let opts = options("evil", "t/datasets/evil", Task::Detect);
    let zip = fixtures::zip_entries(&[("data.yaml", b"names: [a]".to_vec()), ("../../evil.txt", b"pwned".to_vec())]);
    let err = ingest_bytes(&store, "evil.zip", zip, &opts).await.expect_err("traversal");
    assert!(matches!(err, IngestError::Archive(ArchiveError::PathTraversal(ref n)) if n == "../../evil.txt"), "{err}");
    assert!(!opts.work_dir.join("../evil.txt").exists() && !opts.work_dir.join("../../evil.txt").exists());
    nothing_written(&store, "t/datasets/evil").await;

    // Absolute path.
    let zip = fixtures::zip_entries(&[("/tmp/ocellus-abs-evil.txt", b"pwned".to_vec())]);
    let err = ingest_bytes(&store, "abs.zip", zip, &opts).await.expect_err("absolute");
    assert!(matches!(err, IngestError::Archive(ArchiveError::PathTraversal(_))), "{err}");
    assert!(!std::path::Path::new("/tmp/ocellus-abs-evil.txt").exists());

    // Symlink.
    let err = ingest_bytes(&store, "link.tar", fixtures::tar_with_symlink("images/x.jpg", "/etc/passwd"), &opts)
        .await
        .expect_err("symlink");
    assert!(matches!(err, IngestError::Archive(ArchiveError::Link(_))), "{err}");

    // Zip bomb: 64 MiB of zeros compresses about 1000x.
    let zip =
        fixtures::zip_entries(&[("images/train/a.jpg", jpeg.clone()), ("images/train/bomb.bin", vec![0u8; 64 << 20])]);
    let err = ingest_bytes(&store, "bomb.zip", zip, &opts).await.expect_err("bomb");
    assert!(matches!(err, IngestError::Archive(ArchiveError::Ratio { limit: 100 })), "{err}");

    // Too many files.
    let mut few = options("few", "t/datasets/few", Task::Detect);
    few.archive_limits.max_files = 3;
    let entries: Vec<(String, Vec<u8>)> = (0..5).map(|i| (format!("images/train/{i}.jpg"), jpeg.clone())).collect();
    let refs: Vec<(&str, Vec<u8>)> = entries.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
    let err = ingest_bytes(&store, "many.zip", fixtures::zip_entries(&refs), &few).await.expect_err("count");
    assert!(matches!(err, IngestError::Archive(ArchiveError::TooManyFiles(3))), "{err}");

    // Not an archive at all.
    let err = ingest_bytes(&store, "junk.zip", b"this is not a zip".to_vec(), &opts).await.expect_err("junk");
    assert!(matches!(err, IngestError::Archive(ArchiveError::Unsupported)), "{err}");
    nothing_written(&store, "t/datasets/evil").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_items_are_reported_excluded_or_fatal_by_policy() {
    let store = bucket("platform").await;
    let dir = scratch("bad-items");
    let samples = fixtures::samples(4, 20, SIZE);
    fixtures::write_yolo(&dir, &samples, SIZE);
    // A corrupt JPEG (valid header, truncated data), an out-of-range class, a NaN coordinate,
    // a duplicate image, and a label without an image.
    let truncated = samples[0].jpeg[..samples[0].jpeg.len() / 3].to_vec();
    std::fs::write(dir.join("images/train/corrupt.jpg"), truncated).expect("w");
    std::fs::write(dir.join("labels/train/img00001.txt"), "7 0.5 0.5 0.1 0.1\n").expect("w");
    std::fs::write(dir.join("labels/train/img00002.txt"), "0 0.5 nan 0.1 0.1\n").expect("w");
    std::fs::write(dir.join("images/train/copy.jpg"), &samples[3].jpeg).expect("w");
    std::fs::write(dir.join("labels/train/orphan.txt"), "0 0.5 0.5 0.1 0.1\n").expect("w");
    let archive = fixtures::zip_dir(&dir);

    // Exclude (with a permissive threshold): ingested without them, each reported.
    let mut opts = options("bad", "t/datasets/bad", Task::Detect);
    opts.policy = Policy { fail_on_invalid: false, max_invalid_fraction: 0.5 };
    let s = ingest_bytes(&store, "bad.zip", archive.clone(), &opts).await.expect("ingest with exclusions");
    let kinds: BTreeMap<&str, (ItemErrorKind, &str)> =
        s.invalid.items.iter().map(|e| (e.file.as_str(), (e.kind, e.detail.as_str()))).collect();
    assert_eq!(kinds["images/train/corrupt.jpg"].0, ItemErrorKind::CorruptImage);
    assert_eq!(kinds["images/train/img00001.jpg"].0, ItemErrorKind::ClassOutOfRange);
    assert!(kinds["images/train/img00001.jpg"].1.contains("line 1: class 7 is out of range 0..3"));
    assert_eq!(kinds["images/train/img00002.jpg"].0, ItemErrorKind::NonFiniteCoordinate);
    // "copy.jpg" sorts before "img00003.jpg": the later path is reported as the duplicate.
    assert_eq!(kinds["images/train/img00003.jpg"].0, ItemErrorKind::Duplicate);
    assert_eq!(kinds["labels/train/orphan.txt"].0, ItemErrorKind::MissingImage);
    // 20 samples + corrupt.jpg + copy.jpg, less corrupt, bad class, NaN and the duplicate.
    assert_eq!(s.counts.images, 22 - 4);
    assert_eq!(s.invalid.by_reason["CorruptImage"], 1);

    // The default threshold (5%) fails the ingest, and the previous manifest stays as it was.
    let before = store.get(&ingest::manifest_key("t/datasets/bad")).await.expect("manifest");
    let mut strict = options("bad", "t/datasets/bad", Task::Detect);
    strict.policy = Policy::default();
    let err = ingest_bytes(&store, "bad.zip", archive.clone(), &strict).await.expect_err("too many invalid");
    assert!(matches!(err, IngestError::TooManyInvalid { invalid: 4, total: 22, limit: 1, .. }), "{err}");
    assert_eq!(store.get(&ingest::manifest_key("t/datasets/bad")).await.expect("manifest"), before);

    // onInvalid: Fail.
    let mut fail = options("bad2", "t/datasets/bad2", Task::Detect);
    fail.policy = Policy { fail_on_invalid: true, max_invalid_fraction: 1.0 };
    let err = ingest_bytes(&store, "bad.zip", archive, &fail).await.expect_err("fail policy");
    assert!(err.to_string().contains("images/train/corrupt.jpg"), "{err}");
    nothing_written(&store, "t/datasets/bad2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_names_must_match_the_dataset() {
    let store = bucket("platform").await;
    let dir = scratch("mismatch");
    fixtures::write_yolo(&dir, &fixtures::samples(5, 5, SIZE), SIZE);
    let mut opts = options("mm", "t/datasets/mm", Task::Detect);
    opts.class_names = vec!["circle".into(), "triangle".into(), "square".into()];
    let err = ingest_bytes(&store, "mm.zip", fixtures::zip_dir(&dir), &opts).await.expect_err("mismatch");
    assert!(matches!(err, IngestError::ClassMismatch { .. }), "{err}");
    assert!(err.to_string().contains("\"circle\", \"square\", \"triangle\""), "{err}");
    nothing_written(&store, "t/datasets/mm").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratio_splits_are_stable_across_reingests_and_versions_are_immutable() {
    let store = bucket("platform").await;
    let dir = scratch("splits");
    fixtures::write_yolo(&dir, &fixtures::samples(6, 50, SIZE), SIZE);
    let archive = fixtures::zip_dir(&dir);
    let mut opts = options("sp", "t/datasets/sp", Task::Detect);
    opts.ratios = Some(Ratios { train: 0.6, val: 0.2, test: 0.2 });
    ingest_bytes(&store, "sp.zip", archive.clone(), &opts).await.expect("first");
    let (_, first) = manifest_of(&store, "t/datasets/sp").await;
    let v1 = version::freeze(&store, "t/datasets/sp", "v1", Some("first")).await.expect("freeze v1");
    assert_eq!(v1.images, 50);
    assert_eq!(v1.manifest_uri, "s3://platform/t/datasets/sp/versions/v1/manifest.ndjson");

    // Freezing the same manifest again is idempotent.
    assert_eq!(version::freeze(&store, "t/datasets/sp", "v1", Some("first")).await.expect("again").sha256, v1.sha256);

    ingest_bytes(&store, "sp.zip", archive, &opts).await.expect("second");
    let (_, second) = manifest_of(&store, "t/datasets/sp").await;
    let splits =
        |r: &[manifest::ImageRecord]| r.iter().map(|x| (x.sha256.clone(), x.split)).collect::<BTreeMap<_, _>>();
    assert_eq!(splits(&first), splits(&second));
    assert!(splits(&first).values().any(|s| s.as_str() == "test"));

    // A different manifest under an existing version name is refused.
    let dir2 = scratch("splits2");
    fixtures::write_yolo(&dir2, &fixtures::samples(7, 10, SIZE), SIZE);
    let mut opts2 = options("sp", "t/datasets/sp", Task::Detect);
    opts2.work_dir = scratch("splits2-work");
    ingest_bytes(&store, "sp2.zip", fixtures::zip_dir(&dir2), &opts2).await.expect("changed");
    let err = version::freeze(&store, "t/datasets/sp", "v1", None).await.expect_err("immutable");
    assert!(matches!(err, IngestError::VersionExists(ref v) if v == "v1"));
    let v2 = version::freeze(&store, "t/datasets/sp", "v2", None).await.expect("v2");
    assert_eq!(v2.images, 10);
    // v1's manifest is untouched.
    let frozen = store.get("t/datasets/sp/versions/v1/manifest.ndjson").await.expect("v1");
    assert_eq!(manifest::from_ndjson(&String::from_utf8_lossy(&frozen)).expect("parse").1.len(), 50);
    assert!(matches!(version::freeze(&store, "t/datasets/sp", "latest", None).await, Err(IngestError::Task(_))));
}

/// Serves `data` at `/data.zip`: the first request is cut off half-way; later ones honour Range.
/// Requires `Authorization: Bearer t0k3n`. Records each request's Range header.
async fn flaky_server(data: Vec<u8>) -> (String, std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>>) {
    use axum::body::Body;
    use axum::http::{HeaderMap, StatusCode, header};
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let data = Arc::new(data);
    let (seen2, data2) = (seen.clone(), data.clone());
    let app = axum::Router::new().route(
        "/data.zip",
        axum::routing::get(move |headers: HeaderMap| {
            let (seen, data) = (seen2.clone(), data2.clone());
            async move {
                if headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some("Bearer t0k3n") {
                    return axum::response::Response::builder()
                        .status(StatusCode::UNAUTHORIZED)
                        .body(Body::empty())
                        .expect("resp");
                }
                let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).map(String::from);
                let first = {
                    let mut s = seen.lock().expect("lock");
                    s.push(range.clone());
                    s.len() == 1
                };
                let len = data.len();
                if first {
                    // Promise everything, send half, then break the connection.
                    let half = bytes::Bytes::copy_from_slice(&data[..len / 2]);
                    // The pause lets the half reach the client before the connection drops.
                    let body = Body::from_stream(futures::stream::unfold(0u8, move |step| {
                        let half = half.clone();
                        async move {
                            match step {
                                0 => Some((Ok(half), 1)),
                                1 => {
                                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                                    Some((Err(std::io::Error::other("connection cut")), 2))
                                }
                                _ => None,
                            }
                        }
                    }));
                    return axum::response::Response::builder()
                        .header(header::CONTENT_LENGTH, len)
                        .header(header::ACCEPT_RANGES, "bytes")
                        .body(body)
                        .expect("resp");
                }
                let from: usize = range
                    .as_deref()
                    .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
                    .unwrap_or(0);
                let rest = bytes::Bytes::copy_from_slice(&data[from..]);
                axum::response::Response::builder()
                    .status(if from > 0 { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK })
                    .header(header::CONTENT_RANGE, format!("bytes {from}-{}/{len}", len - 1))
                    .body(Body::from(rest))
                    .expect("resp")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/data.zip"), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_source_resumes_an_interrupted_download() {
    let store = bucket("platform").await;
    let dir = scratch("http");
    fixtures::write_yolo(&dir, &fixtures::samples(8, 20, SIZE), SIZE);
    let (url, seen) = flaky_server(fixtures::zip_dir(&dir)).await;
    let opts = options("web", "t/datasets/web", Task::Detect);
    let source = Source::Https { url: url.clone(), headers: vec![("Authorization".into(), "Bearer t0k3n".into())] };
    let s = ingest::ingest(&store, &source, &opts, &|_| {}).await.expect("ingest over http");
    assert_eq!(s.counts.images, 20);
    let ranges = seen.lock().expect("lock").clone();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(ranges[0], None);
    assert!(
        ranges[1].as_deref().is_some_and(|r| r.starts_with("bytes=") && r != "bytes=0-"),
        "second request resumes: {ranges:?}"
    );

    // A client error (no credentials) is not retried and names the URL.
    let before = seen.lock().expect("lock").len();
    let err = ingest::ingest(
        &store,
        &Source::Https { url: url.clone(), headers: vec![] },
        &options("web2", "t/datasets/web2", Task::Detect),
        &|_| {},
    )
    .await
    .expect_err("401");
    assert!(matches!(err, IngestError::Fetch(ref m) if m.contains("401") && m.contains("/data.zip")), "{err}");
    assert_eq!(seen.lock().expect("lock").len(), before, "the 401 was retried");
    nothing_written(&store, "t/datasets/web2").await;
}

fn trainer(args: &[&str], envs: &[(&str, &str)]) -> (i32, Vec<serde_json::Value>) {
    let out = std::process::Command::new(ocellus_tests::workspace_binary("ocellus-trainer"))
        .args(args)
        .envs(envs.iter().copied())
        .env("OCELLUS_S3_ENDPOINT", server().endpoint())
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("OCELLUS_S3_BUCKET", "platform")
        .output()
        .expect("run ocellus-trainer");
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    (out.status.code().unwrap_or(-1), lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_reports_progress_result_and_exit_codes() {
    let _ = bucket("platform").await;
    let dir = scratch("cli");
    fixtures::write_yolo(&dir.join("ds"), &fixtures::samples(10, 12, SIZE), SIZE);
    let work = scratch("cli-work");
    let envs = [
        ("OCELLUS_SOURCE", dir.join("ds").display().to_string()),
        ("OCELLUS_DATASET_PREFIX", "t/datasets/cli".to_string()),
        ("OCELLUS_DATASET_NAME", "cli".to_string()),
        ("OCELLUS_TASK", "detect".to_string()),
        ("OCELLUS_CLASS_NAMES", "circle,square,triangle".to_string()),
        ("OCELLUS_WORK_DIR", work.display().to_string()),
        ("OCELLUS_PROGRESS_INTERVAL", "0".to_string()),
    ];
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, lines) = trainer(&["ingest"], &envs);
    assert_eq!(code, 0, "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "progress" && l["phase"] == "validate" && l["done"] == 12 && l["total"] == 12),
        "{lines:?}"
    );
    let done = lines.last().expect("result");
    assert_eq!(done["event"], "done");
    assert_eq!(done["counts"]["images"], 12);
    assert_eq!(done["manifestUri"], "s3://platform/t/datasets/cli/manifest.ndjson");

    let (code, lines) = trainer(
        &["freeze", "--version-name", "v1", "--description", "cli snapshot"],
        &[("OCELLUS_DATASET_PREFIX", "t/datasets/cli")],
    );
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(lines[0]["version"]["images"], 12);

    // Invalid input: exit code 2 and an error line with a reason.
    let bad = scratch("cli-bad");
    std::fs::write(bad.join("evil.zip"), fixtures::zip_entries(&[("../x", b"x".to_vec())])).expect("w");
    let mut envs_bad = envs.clone();
    let src = bad.join("evil.zip").display().to_string();
    envs_bad[0] = ("OCELLUS_SOURCE", src.as_str());
    let (code, lines) = trainer(&["ingest"], &envs_bad);
    assert_eq!(code, 2);
    let last = lines.last().expect("error line");
    assert_eq!((last["event"].as_str(), last["reason"].as_str()), (Some("error"), Some("UnsafeArchive")));

    // Unreachable storage is transient: exit code 3.
    let out = std::process::Command::new(ocellus_tests::workspace_binary("ocellus-trainer"))
        .args(["ingest"])
        .envs(envs.iter().copied())
        .env("OCELLUS_S3_ENDPOINT", "http://127.0.0.1:9")
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("OCELLUS_S3_BUCKET", "platform")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stdout));
}

//! `ingest` and `freeze`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use ocellus_dataset::archive::Limits;
use ocellus_dataset::fetch::Source;
use ocellus_dataset::image_check::ImageLimits;
use ocellus_dataset::ingest::{self, Options, Policy, Progress};
use ocellus_dataset::layout::FormatRequest;
use ocellus_dataset::split::Ratios;
use ocellus_dataset::{IngestError, Task, version};
use ocellus_storage::s3::{S3Config, S3Uri, Store};
use serde_json::json;

use crate::args::WorkDirArgs;
use crate::report::{self, Done, Failure, emit};

/// Layout of the source.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum FormatArg {
    /// Detect.
    Auto,
    /// Ultralytics YOLO.
    Yolo,
    /// COCO JSON.
    Coco,
    /// Class folders.
    Folders,
}

/// Invalid-item action.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum OnInvalid {
    /// Drop and report.
    Exclude,
    /// Fail the ingest.
    Fail,
}

/// Platform bucket flags shared by `ingest` and `freeze`.
#[derive(Args, Debug)]
pub struct BucketArgs {
    /// Platform bucket holding datasets.
    #[arg(long, env = "OCELLUS_S3_BUCKET")]
    pub bucket: String,
    /// Key prefix of this dataset (`<namespace>/datasets/<name>`).
    #[arg(long, env = "OCELLUS_DATASET_PREFIX")]
    pub prefix: String,
}

/// `ingest` flags.
#[derive(Args, Debug)]
pub struct IngestArgs {
    /// `s3://bucket/key.zip`, `s3://bucket/prefix/`, `https://...`, or a local archive/directory.
    #[arg(long, env = "OCELLUS_SOURCE")]
    pub source: String,
    /// S3 endpoint of the source, when it is not the platform's.
    #[arg(long, env = "OCELLUS_SOURCE_ENDPOINT")]
    pub source_endpoint: Option<String>,
    /// S3 region of the source, when it is not the platform's.
    #[arg(long, env = "OCELLUS_SOURCE_REGION")]
    pub source_region: Option<String>,
    /// Access key of the source (default: the platform's).
    #[arg(long, env = "OCELLUS_SOURCE_ACCESS_KEY_ID", hide_env_values = true)]
    pub source_access_key_id: Option<String>,
    /// Secret key of the source (default: the platform's).
    #[arg(long, env = "OCELLUS_SOURCE_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub source_secret_access_key: Option<String>,
    /// HTTP headers for an https source, `Name: value`, one per line in the variable.
    #[arg(long = "header", env = "OCELLUS_SOURCE_HEADERS", value_delimiter = '\n', hide_env_values = true)]
    pub headers: Vec<String>,
    #[command(flatten)]
    pub bucket: BucketArgs,
    /// Dataset name, for the manifest header.
    #[arg(long, env = "OCELLUS_DATASET_NAME")]
    pub name: String,
    /// Task: detect, segment, classify, pose, obb.
    #[arg(long, env = "OCELLUS_TASK")]
    pub task: Task,
    /// Layout.
    #[arg(long, env = "OCELLUS_FORMAT", value_enum, default_value = "auto")]
    pub format: FormatArg,
    /// Expected class names, comma-separated (empty: from the source).
    #[arg(long, env = "OCELLUS_CLASS_NAMES", value_delimiter = ',')]
    pub class_names: Vec<String>,
    /// Reassign splits by `train,val,test` ratios (default: keep the source's).
    #[arg(long, env = "OCELLUS_SPLIT", value_delimiter = ',', num_args = 3)]
    pub split: Option<Vec<f64>>,
    /// What to do with invalid items.
    #[arg(long, env = "OCELLUS_ON_INVALID", value_enum, default_value = "exclude")]
    pub on_invalid: OnInvalid,
    /// With `exclude`, fail when more than this fraction of items is invalid.
    #[arg(long, env = "OCELLUS_MAX_INVALID_FRACTION", default_value_t = 0.05)]
    pub max_invalid_fraction: f64,
    #[command(flatten)]
    pub work: WorkDirArgs,
    /// Cap on uncompressed bytes.
    #[arg(long, env = "OCELLUS_MAX_TOTAL_BYTES", default_value_t = 20 << 30)]
    pub max_total_bytes: u64,
    /// Cap on files.
    #[arg(long, env = "OCELLUS_MAX_FILES", default_value_t = 2_000_000)]
    pub max_files: u64,
    /// Cap on the compression ratio.
    #[arg(long, env = "OCELLUS_MAX_RATIO", default_value_t = 100)]
    pub max_ratio: u64,
    /// Cap on one image's bytes.
    #[arg(long, env = "OCELLUS_MAX_IMAGE_BYTES", default_value_t = 64 << 20)]
    pub max_image_bytes: u64,
    /// Cap on one image's pixels.
    #[arg(long, env = "OCELLUS_MAX_IMAGE_PIXELS", default_value_t = 100_000_000)]
    pub max_image_pixels: u64,
    /// Concurrent uploads.
    #[arg(long, env = "OCELLUS_UPLOAD_CONCURRENCY", default_value_t = 32)]
    pub upload_concurrency: usize,
    /// Seconds between progress lines.
    #[arg(long, env = "OCELLUS_PROGRESS_INTERVAL", default_value_t = 2.0)]
    pub progress_interval: f64,
}

/// `freeze` flags.
#[derive(Args, Debug)]
pub struct FreezeArgs {
    #[command(flatten)]
    pub bucket: BucketArgs,
    /// Version name, `v<N>`.
    #[arg(long = "version-name", env = "OCELLUS_VERSION_NAME")]
    pub version: String,
    /// Description.
    #[arg(long, env = "OCELLUS_VERSION_DESCRIPTION")]
    pub description: Option<String>,
}

fn platform() -> Result<S3Config, IngestError> {
    S3Config::from_env().map_err(IngestError::Storage)
}

fn source(args: &IngestArgs, platform: &S3Config) -> Result<Source, IngestError> {
    let s = args.source.as_str();
    if s.starts_with("s3://") {
        let uri = S3Uri::parse(s).map_err(IngestError::Fetch)?;
        let mut config = platform.clone();
        if let Some(e) = &args.source_endpoint {
            config.endpoint = Some(e.clone());
        }
        if let Some(r) = &args.source_region {
            config.region = r.clone();
        }
        if let (Some(id), Some(secret)) = (&args.source_access_key_id, &args.source_secret_access_key) {
            config.access_key_id = id.clone();
            config.secret_access_key = secret.clone();
        }
        Ok(Source::S3 { uri, config })
    } else if s.starts_with("https://") || s.starts_with("http://") {
        // `--header` lines, then `OCELLUS_SOURCE_HEADER_<name>` variables (the operator maps a
        // Secret's keys to these, so header values never appear in the Job).
        let from_env: Vec<String> = std::env::vars()
            .filter_map(|(k, v)| Some(format!("{}: {v}", k.strip_prefix("OCELLUS_SOURCE_HEADER_")?)))
            .collect();
        let headers = args
            .headers
            .iter()
            .chain(from_env.iter())
            .filter(|h| !h.trim().is_empty())
            .map(|h| {
                h.split_once(':')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .ok_or_else(|| IngestError::Fetch("headers must be `Name: value`".into()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Source::Https { url: s.to_string(), headers })
    } else {
        Ok(Source::Local(PathBuf::from(s)))
    }
}

/// Runs `ingest`.
pub async fn ingest(args: IngestArgs) -> ExitCode {
    let work = args.work.path("ingest");
    report::finish(run_ingest(&args, &work).await.map(Done::Finished), Some(&work))
}

/// The split ratios of `--split`, checked.
fn ratios(split: Option<&[f64]>) -> Result<Option<Ratios>, IngestError> {
    match split {
        Some([train, val, test])
            if train + val + test > 0.999
                && train + val + test < 1.001
                && [train, val, test].iter().all(|r| **r >= 0.0) =>
        {
            Ok(Some(Ratios { train: *train, val: *val, test: *test }))
        }
        Some(other) => {
            Err(IngestError::Task(format!("split ratios {other:?} must be three non-negative numbers summing to 1")))
        }
        None => Ok(None),
    }
}

/// The ingest options of the flags (pure).
fn options(args: &IngestArgs, ratios: Option<Ratios>, work: &Path) -> Options {
    Options {
        name: args.name.clone(),
        task: args.task,
        class_names: args.class_names.iter().map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect(),
        format: match args.format {
            FormatArg::Auto => FormatRequest::Auto,
            FormatArg::Yolo => FormatRequest::Yolo,
            FormatArg::Coco => FormatRequest::Coco,
            FormatArg::Folders => FormatRequest::Folders,
        },
        ratios,
        policy: Policy {
            fail_on_invalid: matches!(args.on_invalid, OnInvalid::Fail),
            max_invalid_fraction: args.max_invalid_fraction.clamp(0.0, 1.0),
        },
        archive_limits: Limits {
            max_total_bytes: args.max_total_bytes,
            max_files: args.max_files,
            max_ratio: args.max_ratio,
            max_file_bytes: args.max_total_bytes,
        },
        image_limits: ImageLimits { max_bytes: args.max_image_bytes, max_pixels: args.max_image_pixels },
        prefix: args.bucket.prefix.trim_end_matches('/').to_string(),
        work_dir: work.to_path_buf(),
        upload_concurrency: args.upload_concurrency,
    }
}

async fn run_ingest(args: &IngestArgs, work: &Path) -> Result<serde_json::Value, Failure> {
    let platform = platform()?;
    let src = source(args, &platform)?;
    let opts = options(args, ratios(args.split.as_deref())?, work);
    let store = Store::new(&platform, &args.bucket.bucket);
    let interval = Duration::from_secs_f64(args.progress_interval.max(0.0));
    let last = Mutex::new(None::<Instant>);
    let progress = |p: Progress| {
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        let due = last.is_none_or(|t| t.elapsed() >= interval) || p.done == p.total;
        if due {
            *last = Some(Instant::now());
            emit(json!({"event": "progress", "phase": p.phase, "done": p.done, "total": p.total}));
        }
    };
    let summary = ingest::ingest(&store, &src, &opts, &progress).await?;
    Ok(json!({
        "manifestUri": summary.manifest_uri,
        "summaryUri": store.uri(&ingest::summary_key(&opts.prefix)),
        "counts": summary.counts,
        "classNames": summary.class_names,
        "invalid": {"total": summary.invalid.total, "byReason": summary.invalid.by_reason,
                    "samples": summary.invalid.items.iter().take(10).map(|e| e.to_string()).collect::<Vec<_>>()},
        "imagesPerSecond": summary.images_per_second,
        "seconds": {"total": summary.duration_seconds, "fetch": summary.fetch_seconds,
                    "validate": summary.validate_seconds, "upload": summary.upload_seconds},
    }))
}

/// Runs `freeze`.
pub async fn freeze(args: FreezeArgs) -> ExitCode {
    report::finish(run_freeze(&args).await.map(Done::Finished), None)
}

async fn run_freeze(args: &FreezeArgs) -> Result<serde_json::Value, Failure> {
    let store = Store::new(&platform()?, &args.bucket.bucket);
    let info =
        version::freeze(&store, args.bucket.prefix.trim_end_matches('/'), &args.version, args.description.as_deref())
            .await?;
    Ok(json!({ "version": info }))
}

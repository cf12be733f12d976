//! Helpers shared by the libtorch subcommands: error exits, devices, manifests, and files that
//! live either in S3 (`s3://bucket/key`) or on a local path.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use futures::StreamExt;
use ocellus_dataset::manifest::{self, Header, ImageRecord};
use ocellus_dataset::s3::{S3Config, S3Uri, Store};
use serde_json::json;

use crate::ingest_cmd::emit;
use crate::{EXIT_INVALID, EXIT_TRANSIENT};

/// Reports invalid input and returns exit code 2.
pub fn invalid(reason: &str, message: String) -> ExitCode {
    emit(json!({"event": "error", "reason": reason, "message": message}));
    ExitCode::from(EXIT_INVALID)
}

/// Reports a transient (storage) failure and returns exit code 3.
pub fn transient(message: String) -> ExitCode {
    emit(json!({"event": "error", "reason": "StorageError", "message": message}));
    ExitCode::from(EXIT_TRANSIENT)
}

/// An error with its exit code.
pub enum Failure {
    /// Invalid input: reason and message.
    Invalid(&'static str, String),
    /// Transient failure.
    Transient(String),
}

impl Failure {
    /// Reports it and returns the exit code.
    pub fn exit(self) -> ExitCode {
        match self {
            Failure::Invalid(r, m) => invalid(r, m),
            Failure::Transient(m) => transient(m),
        }
    }
}

/// Ends a subcommand: prints its `done` line and removes the scratch directory, or reports
/// the failure; returns the exit code.
pub fn finish(result: Result<serde_json::Value, Failure>, work_dir: &Path) -> ExitCode {
    match result {
        Ok(done) => {
            emit(done);
            let _ = std::fs::remove_dir_all(work_dir);
            ExitCode::SUCCESS
        }
        Err(f) => f.exit(),
    }
}

/// `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when available).
pub fn device(s: &str) -> Result<tch::Device, String> {
    match s {
        "auto" => Ok(tch::Device::cuda_if_available()),
        "cpu" => Ok(tch::Device::Cpu),
        "cuda" => Ok(tch::Device::Cuda(0)),
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(tch::Device::Cuda)
            .ok_or_else(|| format!("unknown device {other:?} (auto, cpu, cuda, cuda:N)")),
    }
}

/// Reads a manifest from S3.
pub async fn load_manifest(cfg: &S3Config, uri: &str) -> Result<(Header, Vec<ImageRecord>), Failure> {
    let uri = S3Uri::parse(uri).map_err(|e| Failure::Invalid("InvalidManifest", e))?;
    let text = match Store::new(cfg, &uri.bucket).get(&uri.key).await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.not_found => return Err(Failure::Invalid("ManifestNotFound", e.to_string())),
        Err(e) => return Err(Failure::Transient(e.to_string())),
    };
    manifest::from_ndjson(&text).map_err(|e| Failure::Invalid("InvalidManifest", e))
}

/// Downloads the records' images (content-addressed) into `dir`, 16 at a time.
pub async fn fetch_images(cfg: &S3Config, records: &[ImageRecord], dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let jobs = records.iter().map(|r| {
        let dest = dir.join(&r.file);
        let url = r.url.clone();
        let cfg = cfg.clone();
        async move {
            if dest.exists() {
                return Ok(());
            }
            let u = S3Uri::parse(&url)?;
            Store::new(&cfg, &u.bucket).download(&u.key, &dest, 1 << 30).await.map(|_| ()).map_err(|e| e.to_string())
        }
    });
    let results: Vec<Result<(), String>> = futures::stream::iter(jobs).buffer_unordered(16).collect().await;
    results.into_iter().collect()
}

/// Copies `src` (an `s3://` URI or a local path) to `dest`.
pub async fn fetch(cfg: Option<&S3Config>, src: &str, dest: &Path) -> Result<PathBuf, Failure> {
    if src.starts_with("s3://") {
        let cfg = cfg.ok_or_else(|| Failure::Transient("S3 is not configured (OCELLUS_S3_ENDPOINT)".into()))?;
        let u = S3Uri::parse(src).map_err(|e| Failure::Invalid("InvalidUri", e))?;
        match Store::new(cfg, &u.bucket).download(&u.key, dest, 8 << 30).await {
            Ok(_) => Ok(dest.to_path_buf()),
            Err(e) if e.not_found => Err(Failure::Invalid("NotFound", format!("{src}: {e}"))),
            Err(e) => Err(Failure::Transient(e.to_string())),
        }
    } else {
        std::fs::copy(src, dest).map_err(|e| Failure::Invalid("NotFound", format!("{src}: {e}")))?;
        Ok(dest.to_path_buf())
    }
}

/// Writes the local file `src` to `dest` (an `s3://` URI or a local path).
pub async fn store(cfg: Option<&S3Config>, src: &Path, dest: &str, content_type: &str) -> Result<(), Failure> {
    if dest.starts_with("s3://") {
        let cfg = cfg.ok_or_else(|| Failure::Transient("S3 is not configured (OCELLUS_S3_ENDPOINT)".into()))?;
        let u = S3Uri::parse(dest).map_err(|e| Failure::Invalid("InvalidUri", e))?;
        Store::new(cfg, &u.bucket)
            .put_file(&u.key, src, content_type)
            .await
            .map_err(|e| Failure::Transient(e.to_string()))
    } else {
        if let Some(parent) = Path::new(dest).parent() {
            std::fs::create_dir_all(parent).map_err(|e| Failure::Invalid("InvalidOutput", e.to_string()))?;
        }
        // Write beside, then rename: readers never see a partial file.
        let tmp = format!("{dest}.partial");
        std::fs::copy(src, &tmp)
            .and_then(|_| std::fs::rename(&tmp, dest))
            .map_err(|e| Failure::Invalid("InvalidOutput", format!("{dest}: {e}")))?;
        Ok(())
    }
}

/// The sidecar of an artifact: `x.safetensors` → `x.json`, `x.onnx` → `x.onnx.json`.
pub fn sidecar(uri: &str) -> String {
    match uri.strip_suffix(".safetensors") {
        Some(stem) => format!("{stem}.json"),
        None => format!("{uri}.json"),
    }
}

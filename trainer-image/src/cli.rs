//! I/O shared by the libtorch subcommands: the dataset manifest and its images, and weights
//! with their model info.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use ocellus_dataset::manifest::{self, Header, ImageRecord};
use ocellus_storage::location::sidecar;
use ocellus_storage::{FetchOptions, Storage};
use ocellus_vision::ModelInfo;
use sha2::{Digest, Sha256};

use crate::report::Failure;

/// Largest image fetched for training or validation.
const MAX_IMAGE_BYTES: u64 = 1 << 30;

/// Reads and parses a manifest (`s3://.../manifest.ndjson` or a local path).
pub async fn load_manifest(storage: &Storage, location: &str) -> Result<(Header, Vec<ImageRecord>), Failure> {
    let bytes = storage.read(location).await.map_err(|e| Failure::from(e).or_reason("ManifestNotFound"))?;
    manifest::from_ndjson(&String::from_utf8_lossy(&bytes)).map_err(|e| Failure::invalid("InvalidManifest", e))
}

/// The images of a manifest for `names`' model: those of `split` (all when `None`), refusing a
/// dataset whose classes differ (`ClassMismatch`) or that has none there (`InvalidSplits`).
/// `what` names the dataset's role in messages (e.g. "the calibration dataset").
pub async fn load_split(
    storage: &Storage,
    location: &str,
    split: Option<&str>,
    names: &[String],
    what: &str,
) -> Result<(Header, Vec<ImageRecord>), Failure> {
    let (header, records) = load_manifest(storage, location).await?;
    if header.names() != names {
        return Err(Failure::invalid(
            "ClassMismatch",
            format!("{what}'s classes {:?} differ from the model's {names:?}", header.names()),
        ));
    }
    let records: Vec<_> = records.into_iter().filter(|r| split.is_none_or(|s| r.split.as_str() == s)).collect();
    if records.is_empty() {
        return Err(Failure::invalid(
            "InvalidSplits",
            match split {
                Some(s) => format!("{what} has no {s:?} images"),
                None => format!("{what} has no images"),
            },
        ));
    }
    Ok((header, records))
}

/// Downloads the records' images (content-addressed, so one already there is kept) into `dir`,
/// 16 at a time.
pub async fn fetch_images(storage: &Storage, records: &[ImageRecord], dir: &Path) -> Result<(), Failure> {
    std::fs::create_dir_all(dir).map_err(|e| Failure::transient(format!("{}: {e}", dir.display())))?;
    let opts = FetchOptions { max_bytes: MAX_IMAGE_BYTES, ..FetchOptions::default() };
    let jobs = records.iter().map(|r| {
        let dest = dir.join(&r.file);
        async move {
            if dest.exists() {
                return Ok(());
            }
            // Beside, then renamed: an interrupted download never passes for a whole image.
            let partial = dest.with_extension("partial");
            storage.fetch(&r.url, &partial, &opts).await?;
            tokio::fs::rename(&partial, &dest).await.map_err(|e| ocellus_storage::StorageError {
                kind: ocellus_core::ErrorKind::Transient,
                reason: "StorageError",
                message: format!("{}: {e}", dest.display()),
            })
        }
    });
    let results: Vec<Result<(), _>> = futures::stream::iter(jobs).buffer_unordered(16).collect().await;
    results.into_iter().collect::<Result<(), _>>().map_err(|e| Failure::from(e).or_reason("ImageNotFound"))
}

/// Fetches weights (or an artifact) and their `ModelInfo` sidecar into `work`, and checks the
/// bytes against the sidecar's SHA-256.
pub async fn fetch_model(storage: &Storage, location: &str, work: &Path) -> Result<(PathBuf, ModelInfo), Failure> {
    tokio::fs::create_dir_all(work).await.map_err(|e| Failure::transient(format!("{}: {e}", work.display())))?;
    let weights = work.join("weights.safetensors");
    let info_location = sidecar(location);
    let info_bytes = storage.read(&info_location).await.map_err(|e| Failure::from(e).or_reason("ModelInfoNotFound"))?;
    let info: ModelInfo = serde_json::from_slice(&info_bytes)
        .map_err(|e| Failure::invalid("InvalidModelInfo", format!("{info_location}: {e}")))?;
    storage
        .fetch(location, &weights, &FetchOptions::default())
        .await
        .map_err(|e| Failure::from(e).or_reason("WeightsNotFound"))?;
    if let Some(want) = &info.sha256 {
        let bytes = tokio::fs::read(&weights).await.map_err(|e| Failure::transient(e.to_string()))?;
        if *want != hex::encode(Sha256::digest(&bytes)) {
            return Err(Failure::invalid(
                "ChecksumMismatch",
                format!("{location} does not match the SHA-256 in its model info"),
            ));
        }
    }
    Ok((weights, info))
}

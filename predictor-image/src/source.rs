//! Fetching the model: an `s3://` URI (through `ocellus-storage`: a timeout per attempt, retries
//! with back-off, resumed downloads) or a local path, plus its `ModelInfo` sidecar (`<artifact>.json`); the artifact's
//! SHA-256 must match the sidecar's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ocellus_core::ErrorKind;
use ocellus_storage::{FetchOptions, Location, Storage, StorageError};
use ocellus_vision::ModelInfo;
use sha2::{Digest, Sha256};

/// Why the model could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Missing, corrupt or mismatched: retrying will not help.
    #[error("{0}")]
    Permanent(String),
    /// Storage unreachable or slow after all retries.
    #[error("{0}")]
    Transient(String),
}

/// Largest artifact accepted.
const MAX_ARTIFACT: u64 = 8 << 30;

fn source_error(e: StorageError) -> SourceError {
    match e.kind {
        ErrorKind::Permanent => SourceError::Permanent(e.message),
        ErrorKind::Transient => SourceError::Transient(e.message),
    }
}

/// A missing object said plainly (`<uri> does not exist`); other failures as they are.
fn missing_or(uri: &str, e: StorageError) -> SourceError {
    if e.reason == "NotFound" { SourceError::Permanent(format!("{uri} does not exist")) } else { source_error(e) }
}

/// Fetches the artifact and its sidecar into `work` (S3) or uses them in place (local path);
/// verifies the SHA-256 against the sidecar's and, when given, the pinned `expect_sha256`.
pub async fn fetch(
    uri: &str,
    work: &Path,
    timeout: Duration,
    retries: u32,
    expect_sha256: Option<&str>,
) -> Result<(PathBuf, ModelInfo), SourceError> {
    let location = Location::parse(uri).map_err(source_error)?;
    let (artifact, sidecar) = if let Location::S3(_) = &location {
        std::fs::create_dir_all(work).map_err(|e| SourceError::Transient(e.to_string()))?;
        let name = location.file_name().unwrap_or("model");
        let (a, s) = (work.join(name), work.join(format!("{name}.json")));
        let storage = Storage::from_env();
        let opts = FetchOptions { max_bytes: MAX_ARTIFACT, attempt_timeout: Some(timeout), retries };
        let sidecar = format!("{uri}.json");
        storage.fetch(&sidecar, &s, &opts).await.map_err(|e| missing_or(&sidecar, e))?;
        storage.fetch(uri, &a, &opts).await.map_err(|e| missing_or(uri, e))?;
        (a, s)
    } else {
        (PathBuf::from(uri), PathBuf::from(format!("{uri}.json")))
    };
    let text = std::fs::read(&sidecar).map_err(|e| {
        SourceError::Permanent(format!(
            "model info {}: {e} (`ocellus-trainer export` writes it next to the artifact)",
            sidecar.display()
        ))
    })?;
    let info: ModelInfo = serde_json::from_slice(&text)
        .map_err(|e| SourceError::Permanent(format!("model info {}: {e}", sidecar.display())))?;
    if info.names.is_empty() || !info.imgsz.is_multiple_of(32) || info.imgsz == 0 {
        return Err(SourceError::Permanent(format!(
            "model info {}: needs class names and an imgsz that is a multiple of 32",
            sidecar.display()
        )));
    }
    let bytes = std::fs::read(&artifact).map_err(|e| SourceError::Permanent(format!("{}: {e}", artifact.display())))?;
    if let Some(pin) = expect_sha256 {
        let got = hex::encode(Sha256::digest(&bytes));
        if !got.eq_ignore_ascii_case(pin) {
            return Err(SourceError::Permanent(format!("{uri}: SHA-256 {got} is not the pinned {pin}")));
        }
    }
    if let Some(want) = &info.sha256 {
        let got = hex::encode(Sha256::digest(&bytes));
        if &got != want {
            return Err(SourceError::Permanent(format!(
                "{}: SHA-256 {got} does not match the model info's {want}",
                artifact.display()
            )));
        }
    }
    Ok((artifact, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(dir: &Path) -> String {
        std::fs::create_dir_all(dir).expect("dir");
        let path = dir.join("model.onnx");
        std::fs::write(&path, b"not really onnx").expect("artifact");
        let info = serde_json::json!({
            "architecture": "yolov8n", "task": "detect", "names": ["a"], "imgsz": 64, "format": "onnx",
            "sha256": hex::encode(Sha256::digest(b"not really onnx")),
        });
        std::fs::write(dir.join("model.onnx.json"), info.to_string()).expect("sidecar");
        path.display().to_string()
    }

    #[tokio::test]
    async fn a_pinned_sha256_must_match_the_artifact() {
        let dir = std::env::temp_dir().join(format!("ocellus-source-pin-{}", std::process::id()));
        let uri = artifact(&dir);
        let right = hex::encode(Sha256::digest(b"not really onnx"));
        let t = Duration::from_secs(5);
        assert!(fetch(&uri, &dir, t, 0, Some(&right)).await.is_ok());
        assert!(fetch(&uri, &dir, t, 0, None).await.is_ok());
        match fetch(&uri, &dir, t, 0, Some(&"0".repeat(64))).await {
            Err(SourceError::Permanent(m)) => assert!(m.contains("is not the pinned"), "{m}"),
            other => panic!("a wrong pin was served: {:?}", other.map(|x| x.0)),
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

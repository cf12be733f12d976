//! Fetching the model: an `s3://` URI (with a timeout, retries with back-off, resumed
//! downloads) or a local path, plus its `ModelInfo` sidecar (`<artifact>.json`); the artifact's
//! SHA-256 must match the sidecar's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ocellus_dataset::s3::{S3Config, S3Uri, Store};
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

async fn get(cfg: &S3Config, uri: &str, dest: &Path, timeout: Duration, retries: u32) -> Result<(), SourceError> {
    let u = S3Uri::parse(uri).map_err(SourceError::Permanent)?;
    let store = Store::new(cfg, &u.bucket);
    let mut attempt = 0;
    loop {
        match tokio::time::timeout(timeout, store.download(&u.key, dest, MAX_ARTIFACT)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) if e.not_found => return Err(SourceError::Permanent(format!("{uri} does not exist"))),
            Ok(Err(e)) if attempt >= retries => return Err(SourceError::Transient(format!("{uri}: {e}"))),
            Err(_) if attempt >= retries => {
                return Err(SourceError::Transient(format!("{uri}: timed out after {timeout:?}")));
            }
            Ok(Err(e)) => tracing::warn!(error = %e, attempt, "model download failed; retrying"),
            Err(_) => tracing::warn!(attempt, "model download timed out; retrying"),
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(500 * 2u64.pow(attempt.min(6)))).await;
    }
}

/// Fetches the artifact and its sidecar into `work` (S3) or uses them in place (local path);
/// verifies the SHA-256.
pub async fn fetch(
    uri: &str,
    work: &Path,
    timeout: Duration,
    retries: u32,
) -> Result<(PathBuf, ModelInfo), SourceError> {
    let (artifact, sidecar) = if uri.starts_with("s3://") {
        let cfg = S3Config::from_env().map_err(SourceError::Permanent)?;
        std::fs::create_dir_all(work).map_err(|e| SourceError::Transient(e.to_string()))?;
        let name = uri.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or("model");
        let (a, s) = (work.join(name), work.join(format!("{name}.json")));
        get(&cfg, &format!("{uri}.json"), &s, timeout, retries).await?;
        get(&cfg, uri, &a, timeout, retries).await?;
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

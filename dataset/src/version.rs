//! Versions: the current manifest frozen as an immutable `v<N>`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::IngestError;
use crate::ingest::manifest_key;
use crate::manifest;
use ocellus_storage::s3::Store;

/// A frozen version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    /// `v<N>`.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// URI of the frozen manifest.
    pub manifest_uri: String,
    /// Images in it.
    pub images: u64,
    /// Hex SHA-256 of the manifest.
    pub sha256: String,
    /// When it was frozen.
    pub created_at: String,
}

/// Freezes the current manifest under `<prefix>/versions/<name>/`. Freezing the same content
/// again returns the existing version; a different content under an existing name is refused.
pub async fn freeze(
    store: &Store,
    prefix: &str,
    name: &str,
    description: Option<&str>,
) -> Result<VersionInfo, IngestError> {
    let valid = name
        .strip_prefix('v')
        .is_some_and(|n| !n.is_empty() && n.len() <= 6 && n.bytes().all(|b| b.is_ascii_digit()) && !n.starts_with('0'));
    if !valid {
        return Err(IngestError::Task(format!("version name {name:?} must be v<N> (v1, v2, ...)")));
    }
    let storage = |e: ocellus_storage::s3::StoreError| IngestError::Storage(e.to_string());
    let current = store
        .get_opt(&manifest_key(prefix))
        .await
        .map_err(storage)?
        .ok_or_else(|| IngestError::Task("the dataset has no manifest yet; ingest it first".into()))?;
    let sha = hex::encode(Sha256::digest(&current));
    let dir = format!("{prefix}/versions/{name}");
    let meta_key = format!("{dir}/version.json");
    if let Some(existing) = store.get_opt(&meta_key).await.map_err(storage)? {
        let info: VersionInfo =
            serde_json::from_slice(&existing).map_err(|e| IngestError::Storage(format!("{meta_key}: {e}")))?;
        return if info.sha256 == sha { Ok(info) } else { Err(IngestError::VersionExists(name.into())) };
    }
    let (_, images) = manifest::from_ndjson(&String::from_utf8_lossy(&current)).map_err(IngestError::Storage)?;
    let manifest_key = format!("{dir}/manifest.ndjson");
    store.put(&manifest_key, current, "application/x-ndjson").await.map_err(storage)?;
    let info = VersionInfo {
        name: name.into(),
        description: description.map(String::from),
        manifest_uri: store.uri(&manifest_key),
        images: images.len() as u64,
        sha256: sha,
        created_at: chrono::Utc::now().to_rfc3339(),
    };
    // version.json last: its presence marks the version complete.
    let body = serde_json::to_vec_pretty(&info).map_err(|e| IngestError::Storage(e.to_string()))?;
    store.put(&meta_key, body.into(), "application/json").await.map_err(storage)?;
    Ok(info)
}

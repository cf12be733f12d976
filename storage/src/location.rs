//! Locations that are either an `s3://bucket/key` URI or a local path, so that every workload
//! reads inputs and writes artifacts the same way whether it runs in a pod (S3) or on a laptop.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use ocellus_core::ErrorKind;
use ocellus_core::error::Classify;

use crate::s3::{S3Config, S3Uri, Store, StoreCause, StoreError};

/// Why a location could not be read or written.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StorageError {
    /// Whether retrying can help.
    pub kind: ErrorKind,
    /// CamelCase reason for machine-readable reports: `NotFound`, `InvalidUri`, `InvalidOutput`,
    /// `NotConfigured`, `TooLarge` or `StorageError`.
    pub reason: &'static str,
    /// What happened, naming the location (never a credential).
    pub message: String,
}

impl StorageError {
    fn permanent(reason: &'static str, message: impl Into<String>) -> StorageError {
        StorageError { kind: ErrorKind::Permanent, reason, message: message.into() }
    }

    fn from_store(e: StoreError) -> StorageError {
        let kind = e.kind();
        let reason = match e.cause {
            StoreCause::NotFound => "NotFound",
            StoreCause::TooLarge => "TooLarge",
            StoreCause::Other => "StorageError",
        };
        StorageError { kind, reason, message: e.to_string() }
    }
}

impl Classify for StorageError {
    fn kind(&self) -> ErrorKind {
        self.kind
    }
}

/// A parsed location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An object in S3-compatible storage.
    S3(S3Uri),
    /// A file on the local file system.
    Local(PathBuf),
}

impl Location {
    /// `s3://bucket/key` or a (non-empty) local path.
    pub fn parse(s: &str) -> Result<Location, StorageError> {
        if s.starts_with("s3://") {
            S3Uri::parse(s).map(Location::S3).map_err(|e| StorageError::permanent("InvalidUri", e))
        } else if s.is_empty() {
            Err(StorageError::permanent("InvalidUri", "empty location (an s3:// URI or a local path)"))
        } else {
            Ok(Location::Local(PathBuf::from(s)))
        }
    }

    /// The last path segment (the file name), if any.
    pub fn file_name(&self) -> Option<&str> {
        let name = match self {
            Location::S3(u) => u.key.rsplit('/').next(),
            Location::Local(p) => p.file_name().and_then(|n| n.to_str()),
        };
        name.filter(|n| !n.is_empty())
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::S3(u) => u.fmt(f),
            Location::Local(p) => p.display().fmt(f),
        }
    }
}

/// The sidecar of an artifact, where its `ModelInfo` lives: `x.safetensors` → `x.json`,
/// anything else → `<artifact>.json`.
pub fn sidecar(location: &str) -> String {
    match location.strip_suffix(".safetensors") {
        Some(stem) => format!("{stem}.json"),
        None => format!("{location}.json"),
    }
}

/// Limits of a fetch.
#[derive(Debug, Clone, Copy)]
pub struct FetchOptions {
    /// Largest object accepted; larger ones fail permanently before any byte is written.
    pub max_bytes: u64,
    /// Deadline of one attempt (S3 only); `None` waits as long as the client's own timeouts allow.
    pub attempt_timeout: Option<Duration>,
    /// Further attempts after a transient failure, with exponential back-off (S3 only).
    pub retries: u32,
}

impl Default for FetchOptions {
    fn default() -> FetchOptions {
        FetchOptions { max_bytes: 8 << 30, attempt_timeout: None, retries: 0 }
    }
}

/// Reads and writes [`Location`]s. S3 settings are optional: a process that only touches local
/// paths needs none, and one that needs S3 without settings fails with `NotConfigured`.
#[derive(Debug, Clone)]
pub struct Storage {
    s3: Result<S3Config, String>,
}

impl Storage {
    /// With the given S3 settings.
    pub fn new(s3: S3Config) -> Storage {
        Storage { s3: Ok(s3) }
    }

    /// With S3 settings from the environment ([`S3Config::from_env`]); missing settings are
    /// reported when an `s3://` location is used.
    pub fn from_env() -> Storage {
        Storage { s3: S3Config::from_env() }
    }

    /// The S3 settings, or why there are none.
    pub fn s3_config(&self) -> Result<&S3Config, StorageError> {
        self.s3.as_ref().map_err(|e| {
            StorageError::permanent("NotConfigured", format!("S3 is not configured: {e} (OCELLUS_S3_ENDPOINT, AWS_*)"))
        })
    }

    fn store_for(&self, uri: &S3Uri) -> Result<Store, StorageError> {
        Ok(Store::new(self.s3_config()?, &uri.bucket))
    }

    /// Reads a whole object or file (manifests, sidecars, summaries).
    pub async fn read(&self, location: &str) -> Result<Bytes, StorageError> {
        match Location::parse(location)? {
            Location::S3(u) => self.store_for(&u)?.get(&u.key).await.map_err(StorageError::from_store),
            Location::Local(p) => tokio::fs::read(&p).await.map(Bytes::from).map_err(|e| local_read_error(&p, e)),
        }
    }

    /// Copies `src` to the local file `dest`: an S3 download (resumable, limited to
    /// `opts.max_bytes`, retried as `opts` says) or a local copy.
    pub async fn fetch(&self, src: &str, dest: &Path, opts: &FetchOptions) -> Result<(), StorageError> {
        match Location::parse(src)? {
            Location::S3(u) => self.download(&u, dest, opts).await,
            Location::Local(p) => {
                let len = tokio::fs::metadata(&p).await.map_err(|e| local_read_error(&p, e))?.len();
                if len > opts.max_bytes {
                    return Err(too_large(src, len, opts.max_bytes));
                }
                tokio::fs::copy(&p, dest).await.map(|_| ()).map_err(|e| local_read_error(&p, e))
            }
        }
    }

    async fn download(&self, u: &S3Uri, dest: &Path, opts: &FetchOptions) -> Result<(), StorageError> {
        let store = self.store_for(u)?;
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(|e| StorageError {
                kind: ErrorKind::Transient,
                reason: "StorageError",
                message: format!("{}: {e}", parent.display()),
            })?;
        }
        let mut attempt = 0;
        loop {
            let download = store.download(&u.key, dest, opts.max_bytes);
            let result = match opts.attempt_timeout {
                Some(t) => tokio::time::timeout(t, download).await.map_err(|_| StorageError {
                    kind: ErrorKind::Transient,
                    reason: "StorageError",
                    message: format!("{u}: timed out after {t:?}"),
                }),
                None => Ok(download.await),
            };
            let err = match result {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => StorageError::from_store(e),
                Err(timeout) => timeout,
            };
            if err.kind == ErrorKind::Permanent || attempt >= opts.retries {
                return Err(err);
            }
            attempt += 1;
            tracing::warn!(error = %err, attempt, "download failed; retrying");
            tokio::time::sleep(Duration::from_millis(500 * 2u64.pow(attempt.min(6)))).await;
        }
    }

    /// Writes the local file `src` to `dest` (an `s3://` URI or a local path). A local `dest` is
    /// written beside and renamed, so readers never see a partial file.
    pub async fn store(&self, src: &Path, dest: &str, content_type: &str) -> Result<(), StorageError> {
        match Location::parse(dest)? {
            Location::S3(u) => self.store_for(&u)?.put_file(&u.key, src, content_type).await.map_err(|e| {
                StorageError { kind: ErrorKind::Transient, reason: "StorageError", message: e.to_string() }
            }),
            Location::Local(p) => {
                let out = |e: std::io::Error| StorageError::permanent("InvalidOutput", format!("{dest}: {e}"));
                if let Some(parent) = p.parent().filter(|p| !p.as_os_str().is_empty()) {
                    tokio::fs::create_dir_all(parent).await.map_err(out)?;
                }
                let tmp = PathBuf::from(format!("{dest}.partial"));
                tokio::fs::copy(src, &tmp).await.map_err(out)?;
                tokio::fs::rename(&tmp, &p).await.map_err(out)
            }
        }
    }
}

fn local_read_error(p: &Path, e: std::io::Error) -> StorageError {
    StorageError::permanent("NotFound", format!("{}: {e}", p.display()))
}

fn too_large(what: &str, len: u64, max: u64) -> StorageError {
    StorageError::permanent("TooLarge", format!("{what}: {len} bytes is over the {max} byte limit"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ocellus-storage-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    }

    #[test]
    fn parses_locations() {
        assert_eq!(
            Location::parse("s3://b/k/m.onnx").expect("s3"),
            Location::S3(S3Uri { bucket: "b".into(), key: "k/m.onnx".into() })
        );
        assert_eq!(Location::parse("/tmp/m.onnx").expect("local"), Location::Local("/tmp/m.onnx".into()));
        assert_eq!(Location::parse("s3:///k").expect_err("no bucket").reason, "InvalidUri");
        assert_eq!(Location::parse("").expect_err("empty").kind, ErrorKind::Permanent);
        assert_eq!(Location::parse("s3://b/k/m.onnx").expect("s3").file_name(), Some("m.onnx"));
        assert_eq!(Location::parse("s3://b/k/").expect("s3").file_name(), None);
    }

    #[test]
    fn sidecars() {
        assert_eq!(sidecar("s3://b/w/best.safetensors"), "s3://b/w/best.json");
        assert_eq!(sidecar("/m/model.onnx"), "/m/model.onnx.json");
    }

    #[tokio::test]
    async fn local_round_trip_and_errors() {
        let d = scratch("local");
        let storage = Storage { s3: Err("AWS_ACCESS_KEY_ID is not set".into()) };
        let src = d.join("a.bin");
        std::fs::write(&src, b"hello").expect("write");
        let dest = d.join("out/deeper/b.bin");
        storage.store(&src, dest.to_str().expect("utf-8"), "application/octet-stream").await.expect("store");
        assert_eq!(std::fs::read(&dest).expect("read"), b"hello");
        assert!(!d.join("out/deeper/b.bin.partial").exists());
        assert_eq!(storage.read(dest.to_str().expect("utf-8")).await.expect("read"), Bytes::from_static(b"hello"));

        let copy = d.join("c.bin");
        storage.fetch(dest.to_str().expect("utf-8"), &copy, &FetchOptions::default()).await.expect("fetch");
        assert_eq!(std::fs::read(&copy).expect("read"), b"hello");
        let small = FetchOptions { max_bytes: 4, ..FetchOptions::default() };
        assert_eq!(
            storage.fetch(src.to_str().expect("utf-8"), &copy, &small).await.expect_err("limit").reason,
            "TooLarge"
        );

        let missing = storage.read(d.join("nope").to_str().expect("utf-8")).await.expect_err("missing");
        assert_eq!((missing.kind, missing.reason), (ErrorKind::Permanent, "NotFound"));
        let unconfigured = storage.read("s3://b/k").await.expect_err("no S3");
        assert_eq!(unconfigured.reason, "NotConfigured");
        assert!(unconfigured.message.contains("AWS_ACCESS_KEY_ID"));
        let _ = std::fs::remove_dir_all(&d);
    }
}
